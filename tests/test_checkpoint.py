"""labkit.checkpoint's trust: resume unpickles, so COMPLETE.json is HMAC-signed with the run's own key and checked
before DeepSpeed reads a byte; a tampered file, a rewritten manifest, a wrong or missing key are refused; and DeepSpeed
loads the private copy that was checked, never the folder a writer could change after the check."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from labkit import checkpoint, train
from labkit.errors import ConfigError

BLOB = "mp_rank_00_model_states.pt"


class FakeEngine:
    """Records what DeepSpeed would have unpickled: the tag, and the bytes and mode of the folder it read them from.
    `before_load` runs first: a writer of the shared volume acting between the check and the load."""

    def __init__(self, before_load=None, fail=False):
        self.loaded, self.read, self.dirs, self.before_load, self.fail = [], {}, [], before_load, fail

    def load_checkpoint(self, checkpoint_dir, tag):
        if self.before_load:
            self.before_load()
        self.loaded.append(tag)
        self.dirs.append((checkpoint_dir, stat.S_IMODE(os.stat(checkpoint_dir).st_mode)))
        self.read = {p.name: p.read_bytes() for p in (Path(checkpoint_dir) / tag).iterdir()}
        if self.fail:
            raise RuntimeError("unpickling failed")
        return checkpoint_dir, {}


@pytest.fixture(autouse=True)
def no_ambient_key(monkeypatch, tmp_path):
    monkeypatch.delenv(checkpoint.KEY_ENV, raising=False)
    monkeypatch.setattr(checkpoint, "MOUNTED_KEY", tmp_path / "no-such-mount" / "key")


def _run(root, steps=(10, 20)):
    """A run's folder as a save leaves it: its key file and signed checkpoints."""
    key = checkpoint.run_key(root, create=True)
    for step in steps:
        tag = root / checkpoint.tag_of(step)
        tag.mkdir(parents=True)
        (tag / BLOB).write_bytes(os.urandom(1024))
        checkpoint.write_manifest(tag, {"step": step, "world_size": 1}, key)
    return key


def _resume(root):
    engine, said = FakeEngine(), []
    step = checkpoint.resume(engine, str(root), shape={"world_size": 1, "stage": 0}, say=said.append)
    return step, engine.loaded, said


def test_resume_loads_the_newest_checkpoint_with_the_runs_own_private_key(tmp_path):
    _run(tmp_path)
    key_file = tmp_path / checkpoint.KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and len(key_file.read_bytes()) == 64
    assert _resume(tmp_path)[:2] == (20, ["step00000020"])
    assert "hmac" in json.loads((tmp_path / "step00000020" / checkpoint.COMPLETE_MARKER).read_text())
    # a fresh run keeps an existing key; the env var (e.g. a Kubernetes Secret) takes precedence over the file
    assert checkpoint.run_key(tmp_path, create=True) == key_file.read_bytes()


def test_a_tampered_checkpoint_file_is_never_loaded(tmp_path):
    _run(tmp_path)
    blob = tmp_path / "step00000020" / BLOB
    blob.write_bytes(b"\x80\x04evil" + blob.read_bytes()[6:])  # same size, other content
    step, loaded, said = _resume(tmp_path)
    assert (step, loaded) == (10, ["step00000010"])  # the older, intact one
    assert said == [f"checkpoint step00000020 skipped: {BLOB} does not match its checksum (corrupt or truncated)"]


@pytest.mark.parametrize("signer", [None, b"k" * 64], ids=["old-signature", "attackers-own-key"])
def test_a_rewritten_manifest_is_refused_before_anything_is_loaded(tmp_path, signer):
    _run(tmp_path)
    tag = tmp_path / "step00000020"
    (tag / BLOB).write_bytes(b"a planted pickle")
    manifest = json.loads((tag / checkpoint.COMPLETE_MARKER).read_text())
    manifest["files"][BLOB] = [16, checkpoint._sha256(tag / BLOB)]  # the hash list rewritten to match the plant
    if signer:
        manifest["hmac"] = checkpoint._signature(manifest, signer)
    (tag / checkpoint.COMPLETE_MARKER).write_text(json.dumps(manifest))
    engine = FakeEngine()
    with pytest.raises(ConfigError) as exc:
        checkpoint.resume(engine, str(tmp_path), shape={"world_size": 1, "stage": 0}, say=print)
    assert engine.loaded == []
    assert exc.value.field == "checkpoint_dir" and "not signed with this run's key" in exc.value.problem
    assert checkpoint.KEY_ENV in exc.value.fix


def test_another_runs_checkpoint_or_a_wrong_key_is_refused(tmp_path, monkeypatch):
    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    _run(mine, steps=(10,))
    _run(theirs, steps=(20,))
    shutil.copytree(theirs / "step00000020", mine / "step00000020")  # planted in my folder
    with pytest.raises(ConfigError, match="step00000020/COMPLETE.json is not signed with this run's key"):
        _resume(mine)
    monkeypatch.setenv(checkpoint.KEY_ENV, "x" * 64)  # the wrong key for every checkpoint here
    with pytest.raises(ConfigError, match="not signed with this run's key"):
        _resume(theirs)


def test_a_missing_or_unsafe_key_stops_a_resume_before_training(tmp_path):
    _run(tmp_path)
    key_file = tmp_path / checkpoint.KEY_FILE
    resume = train.TrainConfig(synthetic=True, device="cpu", checkpoint_dir=str(tmp_path), resume=True)
    key_file.chmod(0o644)  # readable by others: anyone could sign
    with pytest.raises(ConfigError, match="not your own private key file .*mode 644"):
        resume.resolved()
    key_file.unlink()
    with pytest.raises(ConfigError) as exc:
        resume.resolved()
    assert exc.value.field == "checkpoint_dir" and "no checkpoint key" in exc.value.problem
    assert "LABKIT_CHECKPOINT_KEY" in exc.value.fix
    key_file.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match="not a plain file"):
        _resume(tmp_path)
    key_file.unlink()
    key_file.write_text("short")
    key_file.chmod(0o600)
    with pytest.raises(ConfigError, match="5 bytes"):
        _resume(tmp_path)


def test_a_fresh_run_makes_its_key_up_front_and_a_kubernetes_secret_takes_precedence(tmp_path, monkeypatch):
    run_dir = tmp_path / "runs" / "alice"
    train.TrainConfig(synthetic=True, device="cpu", checkpoint_dir=str(run_dir)).resolved()
    made = (run_dir / checkpoint.KEY_FILE).read_bytes()
    mounted = tmp_path / "secret" / "key"
    mounted.parent.mkdir()
    mounted.write_text("s" * 64 + "\n")
    monkeypatch.setattr(checkpoint, "MOUNTED_KEY", mounted)
    assert checkpoint.run_key(run_dir) == b"s" * 64 != made
    monkeypatch.setenv(checkpoint.KEY_ENV, "e" * 64)
    assert checkpoint.run_key(run_dir) == b"e" * 64


def test_a_file_swapped_after_the_check_is_not_what_gets_loaded(tmp_path):
    """The check-then-load window (issue 12): the files are hashed as they are copied into a private 0700 folder, and
    DeepSpeed loads that copy; a file swapped on the shared volume after the check reaches nothing."""
    _run(tmp_path / "run")
    blob = tmp_path / "run" / "step00000020" / BLOB
    signed = blob.read_bytes()
    engine = FakeEngine(before_load=lambda: blob.write_bytes(b"\x80\x04a planted pickle"))
    assert checkpoint.resume(engine, str(tmp_path / "run"), shape={"world_size": 1, "stage": 0}, say=print) == 20
    assert blob.read_bytes().startswith(b"\x80\x04a planted")  # the swap happened, before the load
    assert engine.read == {BLOB: signed}  # ... and the load read what was signed
    ((loaded_from, mode),) = engine.dirs
    assert mode == 0o700 and not Path(loaded_from).is_relative_to(tmp_path / "run")
    assert not os.path.exists(loaded_from)  # removed after loading


def test_the_private_copy_is_removed_when_the_load_fails_or_a_checkpoint_is_skipped(tmp_path, monkeypatch):
    _run(tmp_path)
    engine = FakeEngine(fail=True)
    with pytest.raises(RuntimeError, match="unpickling failed"):
        checkpoint.resume(engine, str(tmp_path), shape={"world_size": 1, "stage": 0}, say=print)
    ((loaded_from, _),) = engine.dirs
    assert not os.path.exists(loaded_from)
    made, real = [], checkpoint.private_dir

    @contextlib.contextmanager
    def recorded():
        with real() as path:
            made.append(path)
            yield path

    monkeypatch.setattr(checkpoint, "private_dir", recorded)
    blob = tmp_path / "step00000020" / BLOB
    data = blob.read_bytes()  # random: a first byte flipped, not overwritten ("x" was already there 1 time in 256)
    blob.write_bytes(bytes([data[0] ^ 0xFF]) + data[1:])  # the newest fails its check: skipped, the older one loaded
    assert _resume(tmp_path)[:2] == (10, ["step00000010"])
    assert len(made) == 2 and not any(p.exists() for p in made)


def test_a_symlinked_checkpoint_file_is_never_followed(tmp_path):
    _run(tmp_path)
    outside = tmp_path / "outside.pt"
    blob = tmp_path / "step00000020" / BLOB
    outside.write_bytes(blob.read_bytes())  # the same bytes, so only the link itself can be what is refused
    blob.unlink()
    blob.symlink_to(outside)
    step, loaded, said = _resume(tmp_path)
    assert (step, loaded) == (10, ["step00000010"])
    assert said == [f"checkpoint step00000020 skipped: {BLOB} is missing or not a plain file"]


@pytest.mark.parametrize("listed", ["../outside.pt", "/etc/passwd"])
def test_a_signed_manifest_listing_a_path_outside_its_checkpoint_is_refused(tmp_path, listed):
    """Even correctly signed (a leaked key, a bug in a writer), a manifest may only name files inside its own folder:
    hashing or copying ../x would read (and load) a file the checkpoint does not hold."""
    key = _run(tmp_path)
    tag = tmp_path / "step00000020"
    (tmp_path / "outside.pt").write_bytes(b"not the checkpoint's")
    manifest = json.loads((tag / checkpoint.COMPLETE_MARKER).read_text())
    manifest["files"][listed] = [1, "0" * 64]
    manifest["hmac"] = checkpoint._signature(manifest, key)
    (tag / checkpoint.COMPLETE_MARKER).write_text(json.dumps(manifest))
    assert checkpoint.check_files(tag, key) == (None, f"{listed} is not a path inside the checkpoint")
    step, loaded, _ = _resume(tmp_path)
    assert (step, loaded) == (10, ["step00000010"])  # the older, intact one
