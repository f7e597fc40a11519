"""labkit.data: the cifar-10-batches-py format, its validation, the checked download and the synthetic generator."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import socket
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from labkit import data
from labkit.errors import ConfigError, LabkitError


@pytest.fixture(scope="module")
def small_set() -> data.CifarArrays:
    return data.synthetic_arrays(train=500, test=100, seed=3)


@pytest.fixture()
def written(tmp_path, small_set) -> Path:
    return data.write(small_set, tmp_path)


def official_style_read(path: Path) -> dict:
    """How the dataset's own page says to read a batch (Python 3): pickle.load(f, encoding='bytes')."""
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def test_written_files_have_the_official_layout_and_keys(written, small_set):
    assert sorted(p.name for p in written.iterdir()) == sorted(
        [*data.TRAIN_FILES, data.TEST_FILE, data.META_FILE, data.SYNTHETIC_MARKER]
    )
    batch = official_style_read(written / "data_batch_1")
    assert set(batch) >= {b"data", b"labels", b"batch_label", b"filenames"}
    assert batch[b"data"].dtype == np.uint8 and batch[b"data"].shape == (100, 3072)
    # row layout: the red plane, then green, then blue, each 32x32 row-major
    np.testing.assert_array_equal(batch[b"data"][0].reshape(3, 32, 32), small_set.train_images[0])
    meta = official_style_read(written / data.META_FILE)
    assert [n.decode() for n in meta[b"label_names"]] == list(data.LABEL_NAMES)


def test_load_round_trips_and_marks_synthetic(written, small_set):
    arrays = data.load(written.parent)  # the parent folder is accepted too
    assert arrays.synthetic and arrays.kind == "synthetic"
    np.testing.assert_array_equal(arrays.train_images, small_set.train_images)
    np.testing.assert_array_equal(arrays.test_labels, small_set.test_labels)
    assert arrays.train_images.shape == (500, 3, 32, 32) and arrays.train_labels.dtype == np.int64
    assert np.bincount(arrays.train_labels).tolist() == [50] * 10  # balanced classes


def test_a_set_without_the_marker_is_real_data(written):
    (written / data.SYNTHETIC_MARKER).unlink()
    arrays = data.load(written)
    assert not arrays.synthetic and arrays.kind == "CIFAR-10"


def test_missing_folder_and_missing_file_name_the_field_and_the_fix(tmp_path, written):
    with pytest.raises(ConfigError) as exc:
        data.load(tmp_path / "nowhere")
    assert exc.value.field == "data_dir" and "PVC" in exc.value.fix and "synthetic" in exc.value.fix
    (written / "data_batch_3").unlink()
    with pytest.raises(ConfigError, match="data_batch_3 is missing"):
        data.load(written)
    with pytest.raises(ConfigError, match="synthetic data is off"):
        data.find_folder("")


def test_truncated_file_is_reported_as_corrupt(written):
    path = written / "data_batch_2"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(data.DataFormatError, match="data_batch_2: not a readable CIFAR-10 batch"):
        data.load(written)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.__setitem__(b"data", d[b"data"][:, :1024]), r"shape \(N, 3072\)"),
        (lambda d: d.__setitem__(b"data", d[b"data"].astype(np.float32)), "uint8"),
        (lambda d: d.__setitem__(b"labels", d[b"labels"][:-1]), "99 labels for 100 images"),
        (lambda d: d.__setitem__(b"labels", [12] * len(d[b"labels"])), r"labels must be integers in 0..9"),
        (lambda d: d.pop(b"data"), "no 'data' entry"),
    ],
)
def test_wrong_arrays_are_refused_with_the_file_named(written, change, message):
    path = written / "data_batch_4"
    batch = official_style_read(path)
    change(batch)
    path.write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(data.DataFormatError, match=message) as exc:
        data.load(written)
    assert "data_batch_4" in str(exc.value)


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickles_that_would_run_code_are_refused(written):
    path = written / "test_batch"
    path.write_bytes(pickle.dumps({b"data": _RunsCode(), b"labels": []}, protocol=2))
    with pytest.raises(data.DataFormatError, match="refusing to load"):
        data.read_batch(path)


def _tarball(folder: Path, dest: Path, extra: tuple[str, bytes] | None = None) -> tuple[Path, str]:
    archive = dest / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=data.FOLDER)
        if extra:
            info = tarfile.TarInfo(extra[0])
            info.size = len(extra[1])
            tar.addfile(info, io.BytesIO(extra[1]))
    return archive, hashlib.md5(archive.read_bytes()).hexdigest()


def test_download_verifies_the_checksum_and_extracts(tmp_path, written):
    archive, md5 = _tarball(written, tmp_path)
    folder = data.download(tmp_path / "dest", url=archive.as_uri(), md5=md5)
    assert folder == tmp_path / "dest" / data.FOLDER
    assert len(data.load(folder).train_labels) == 500
    assert not list((tmp_path / "dest").glob(".download-*"))  # the staging folder is gone
    # already there: nothing is fetched (an unreachable URL proves it)
    assert data.download(tmp_path / "dest", url="http://127.0.0.1:9/never") == folder


def test_download_with_a_wrong_checksum_keeps_nothing(tmp_path, written):
    archive, _ = _tarball(written, tmp_path)
    with pytest.raises(data.DataFormatError, match="checksum mismatch"):
        data.download(tmp_path / "dest", url=archive.as_uri(), md5="0" * 32)
    assert not (tmp_path / "dest" / data.FOLDER).exists()


def test_a_python_without_the_extraction_filter_is_refused_before_downloading(tmp_path, monkeypatch):
    """3.10 before 3.10.12 (pyproject allows 3.10) has no tarfile filter: one error, nothing fetched or made."""
    monkeypatch.delattr(tarfile, "data_filter")
    with pytest.raises(ConfigError) as exc:
        data.download(tmp_path / "dest", url="http://127.0.0.1:9/never")  # unreachable: a fetch would say so instead
    assert exc.value.field == "data_dir" and "3.10.12" in exc.value.problem and "newer Python" in exc.value.fix
    assert not (tmp_path / "dest").exists()


def test_download_refuses_archive_members_outside_the_folder(tmp_path, written):
    archive, md5 = _tarball(written, tmp_path, extra=("../escaped.txt", b"x"))
    with pytest.raises(Exception) as exc:
        data.download(tmp_path / "dest", url=archive.as_uri(), md5=md5)
    assert "outside" in str(exc.value) or isinstance(exc.value, tarfile.TarError)
    assert not (tmp_path / "escaped.txt").exists()


def test_offline_download_fails_fast_with_how_to_provide_the_data(tmp_path):
    with socket.socket() as s:  # a port nothing listens on: connection refused at once, like an offline proxy
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(ConfigError) as exc:
        data.download(tmp_path, url=f"http://127.0.0.1:{port}/cifar-10-python.tar.gz", timeout=5)
    assert time.monotonic() - start < 5
    assert exc.value.field == "data_dir" and "could not be downloaded" in exc.value.problem
    assert "PVC" in exc.value.fix and "synthetic" in exc.value.fix


@pytest.mark.parametrize("timeout", ["-1", "0", "nan"])
def test_cli_download_refuses_a_timeout_that_is_no_time_before_anything(timeout, tmp_path, capsys):
    from labkit.cli import main

    # -1 was a ValueError traceback from the socket, after the folder was made
    assert main(["data", "download", "--dest", str(tmp_path / "d"), "--timeout", timeout]) == 2
    assert capsys.readouterr().err.startswith("labkit: error: --timeout: must be a")
    assert not (tmp_path / "d").exists()


def test_synthetic_sets_are_deterministic_and_sized(small_set):
    again = data.synthetic_arrays(train=500, test=100, seed=3)
    np.testing.assert_array_equal(small_set.train_images, again.train_images)
    other = data.synthetic_arrays(train=500, test=100, seed=4)
    assert not np.array_equal(small_set.train_images, other.train_images)
    assert small_set.train_images.shape == (500, 3, 32, 32) and small_set.test_images.shape == (100, 3, 32, 32)
    assert 60 < small_set.train_images.mean() < 200 and small_set.train_images.std() > 20  # not flat, not clipped
    with pytest.raises(ConfigError):
        data.synthetic_arrays(train=5, test=100)


def test_synthetic_classes_carry_signal_beyond_chance(small_set):
    """A nearest-class-mean rule on per-channel colour statistics already beats chance: the labels are learnable
    (the CNN's falling loss is tested in test_train.py), while translation keeps pixel templates weak."""

    def features(x):
        x = x.astype(np.float32)
        return np.concatenate([x.mean(axis=(2, 3)), x.std(axis=(2, 3))], axis=1)

    f_train, f_test = features(small_set.train_images), features(small_set.test_images)
    means = np.stack([f_train[small_set.train_labels == c].mean(0) for c in range(10)])
    pred = np.argmin(((f_test[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    assert (pred == small_set.test_labels).mean() > 0.3


def test_training_set_writes_a_synthetic_set_once_and_never_over_real_data(tmp_path):
    arrays = data.training_set(tmp_path, True, synthetic_train=100, synthetic_test=20)
    assert arrays.synthetic and len(arrays.train_labels) == 100
    stamp = (tmp_path / data.FOLDER / "test_batch").stat().st_mtime_ns
    data.training_set(tmp_path, True, synthetic_train=100, synthetic_test=20)
    assert (tmp_path / data.FOLDER / "test_batch").stat().st_mtime_ns == stamp  # reused, not rewritten
    assert len(data.training_set(tmp_path, True, synthetic_train=200, synthetic_test=20).train_labels) == 200
    (tmp_path / data.FOLDER / data.SYNTHETIC_MARKER).unlink()  # now it looks like real data
    with pytest.raises(ConfigError) as exc:
        data.training_set(tmp_path, True, synthetic_train=100, synthetic_test=20)
    assert exc.value.field == "synthetic"
    assert not data.training_set("", True, synthetic_train=50, synthetic_test=10).source.startswith("/")  # in memory


def test_limit_takes_the_first_images(small_set):
    cut = small_set.limit(50, 10)
    assert len(cut.train_labels) == 50 and len(cut.test_labels) == 10 and cut.synthetic
    np.testing.assert_array_equal(cut.train_images, small_set.train_images[:50])


def test_synthetic_data_never_replaces_a_real_set_and_bad_destinations_are_one_line(tmp_path, written):
    """`labkit data synth --dest DIR` removed a real set there without a word; a --dest that is a file was a
    traceback; a partial set made download fail after fetching the whole archive."""
    real = tmp_path / "real"
    __import__("shutil").copytree(written, real / data.FOLDER)
    (real / data.FOLDER / data.SYNTHETIC_MARKER).unlink(missing_ok=True)
    with pytest.raises(ConfigError) as err:
        data.write_synthetic(real, 20, 10)
    assert err.value.field == "dest" and "not synthetic" in err.value.problem
    assert not data.load(real).synthetic  # still the real one
    (tmp_path / "afile").write_text("")
    for call in (lambda: data.write_synthetic(tmp_path / "afile", 20, 10), lambda: data.download(tmp_path / "afile")):
        with pytest.raises(ConfigError) as err:
            call()
        assert err.value.field == "dest" and "cannot make the folder" in err.value.problem
    partial = tmp_path / "partial" / data.FOLDER
    partial.mkdir(parents=True)
    (partial / "data_batch_1").write_bytes(b"")
    with pytest.raises(ConfigError, match="holds no complete set"):
        data.download(tmp_path / "partial", url="http://127.0.0.1:9/never-fetched")


def test_offline_download_leaves_no_folder_it_made(tmp_path):
    with pytest.raises(ConfigError):
        data.download(tmp_path / "new" / "sub", url="http://127.0.0.1:9/cifar.tgz", timeout=2)
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize(
    "sizes, field",
    [((10**12, 10), "synthetic size"), ((100, 10), None), ((20, 10, -1), "seed")],
)
def test_synthetic_sizes_and_seed_are_checked_before_any_memory_is_taken(sizes, field):
    if field is None:
        assert len(data.synthetic_arrays(*sizes).train_labels) == 100
        return
    with pytest.raises(ConfigError) as err:
        data.synthetic_arrays(*sizes)
    assert err.value.field == field


@pytest.mark.parametrize(
    "labels, words",
    [([None] * 3, "labels must be integers"), ([[1], [2, 3], [4]], "not a flat list"), ("dir", "cannot be read")],
)
def test_malformed_batches_are_data_format_errors_not_tracebacks(written, labels, words):
    batch = written / "data_batch_1"
    if labels == "dir":
        batch.unlink()
        batch.mkdir()
    else:
        record = {b"data": np.zeros((3, 3072), np.uint8), b"labels": labels}
        batch.write_bytes(pickle.dumps(record, protocol=2))
    with pytest.raises(data.DataFormatError, match=words):
        data.read_batch(batch) if labels != "dir" else data.load(written)


def test_errors_are_labkit_errors():
    assert issubclass(data.DataFormatError, LabkitError)
