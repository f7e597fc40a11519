"""CIFAR-10 on disk in the standard `cifar-10-batches-py` layout (https://www.cs.toronto.edu/~kriz/cifar.html): read,
verified, downloaded or synthesised. Six pickled dicts, `data_batch_1..5` and `test_batch`, hold `data` (uint8,
N x 3072: the red, green and blue 32x32 planes of one image per row) and `labels` (N ints in 0..9); `batches.meta` the
ten `label_names`. The unpickler accepts numpy arrays and nothing else: a data folder on a shared volume cannot run code
in the training job. `write_synthetic` writes the same files from generated images with learnable class structure, for
machines without the real set; everything trained on it is marked `synthetic`.
"""

from __future__ import annotations

import codecs
import dataclasses
import hashlib
import io
import json
import os
import pickle
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from labkit import shared_volume
from labkit.compat import file_digest
from labkit.errors import ConfigError, LabkitError, check_int, check_number, make_folder

FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
LABEL_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_SHAPE = (3, 32, 32)
NUM_CLASSES = 10
MAX_SYNTHETIC = 200_000  # images a synthetic split may have
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
# Written next to the batches by write_synthetic; its presence is how a synthetic set is recognised later.
SYNTHETIC_MARKER = "SYNTHETIC.json"

OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
OFFICIAL_MD5 = "c58f30108f718f92721af3b95e74349a"  # published by the dataset's authors' page and torchvision

PROVIDE_DATA_FIX = (
    "put the extracted `cifar-10-batches-py` folder there (from cifar-10-python.tar.gz; in a cluster, on the shared "
    "PVC), or download it on a machine with network access (`labkit data download --dest DIR`), or train on "
    "synthetic data (synthetic=True / `--synthetic`)"
)
# A job's pods mount the shared inputs read-only (labkit.shared_volume): only the lab can put the data there.
SHARED_DATA_FIX = (
    f"run `labkit data download --dest {shared_volume.DATA_DIR}` (or `labkit data synth --dest "
    f"{shared_volume.DATA_DIR}`) in the lab first: jobs mount {shared_volume.DATA_DIR} read-only"
)


def _provide_fix(path: Path) -> str:
    return SHARED_DATA_FIX if path.is_relative_to(shared_volume.DATA_DIR) else PROVIDE_DATA_FIX


class DataFormatError(LabkitError):
    """A CIFAR-10 file exists but is not in the expected format (corrupt, truncated, wrong shapes)."""


@dataclass
class CifarArrays:
    """The whole data set in memory: images uint8 (N, 3, 32, 32), labels int64 (N,)."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    label_names: tuple[str, ...]
    synthetic: bool
    source: str  # the folder it was read from, or a description

    @property
    def kind(self) -> str:
        return "synthetic" if self.synthetic else "CIFAR-10"

    def limit(self, max_train: int = 0, max_test: int = 0) -> CifarArrays:
        """The first `max_train` / `max_test` images (0 = all): the files are already in random order."""
        tr, te = slice(0, max_train if max_train > 0 else None), slice(0, max_test if max_test > 0 else None)
        cut = {"train_images": self.train_images[tr], "train_labels": self.train_labels[tr]}
        return dataclasses.replace(self, **cut, test_images=self.test_images[te], test_labels=self.test_labels[te])

    def summary(self) -> dict:
        head = {"kind": self.kind, "synthetic": self.synthetic, "source": self.source}
        sizes = {"train_images": len(self.train_labels), "test_images": len(self.test_labels)}
        return head | sizes | {"classes": len(self.label_names)}


# -- Reading -----------------------------------------------------------------------------------------------------------
class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Resolves only what numpy arrays need; any other global in the file is refused (pickles can run code)."""

    _ALLOWED = {(f"numpy{core}.multiarray", n) for core in (".core", "._core") for n in ("_reconstruct", "scalar")}
    _ALLOWED |= {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are expected")
        if module in ("_codecs", "numpy"):
            return codecs.encode if module == "_codecs" else getattr(np, name)
        import numpy.core.multiarray as ma  # noqa: PLC0415  (numpy 2 keeps this alias importable)

        return getattr(ma, name)


def _load_pickle(path: Path) -> dict:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError("data_dir", f"{path.name} is missing from {path.parent}", _provide_fix(path)) from None
    except OSError as exc:  # a folder of that name, no permission
        raise DataFormatError(f"{path}: cannot be read ({exc.strerror}). Fix: {_provide_fix(path)}") from None
    try:
        obj = _ArraysOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:  # truncated, not a pickle, or refused content
        why = f"({type(exc).__name__}: {exc}). Fix: replace the file with the original from cifar-10-python.tar.gz"
        raise DataFormatError(f"{path}: not a readable CIFAR-10 batch {why}") from None
    if not isinstance(obj, dict):
        raise DataFormatError(f"{path}: expected a pickled dict, found {type(obj).__name__}")
    # The official files were pickled by Python 2: keys come back as bytes. Accept str keys too.
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}


def read_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> (images uint8 (N, 3, 32, 32), labels int64 (N,)), validated."""
    path = Path(path)
    d = _load_pickle(path)
    for key in ("data", "labels"):
        if key not in d:
            raise DataFormatError(f"{path}: no '{key}' entry (found {sorted(d)})")
    data = d["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        got = data.dtype if isinstance(data, np.ndarray) else type(data).__name__
        raise DataFormatError(f"{path}: 'data' must be a uint8 array, found {got}")
    if data.ndim != 2 or data.shape[1] != 3072:
        raise DataFormatError(f"{path}: 'data' must have shape (N, 3072) = N images of 3x32x32, found {data.shape}")
    try:
        labels = np.asarray(d["labels"])
    except ValueError:  # ragged
        raise DataFormatError(f"{path}: 'labels' is not a flat list of class numbers") from None
    if labels.ndim != 1 or len(labels) != len(data):
        raise DataFormatError(f"{path}: {len(labels)} labels for {len(data)} images")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise DataFormatError(f"{path}: labels must be integers in 0..{NUM_CLASSES - 1}, found {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        found = f"found {labels.dtype} in [{labels.min()}, {labels.max()}]"
        raise DataFormatError(f"{path}: labels must be integers in 0..{NUM_CLASSES - 1}, {found}")
    return data.reshape(-1, *IMAGE_SHAPE), labels.astype(np.int64)


def find_folder(data_dir: str | Path) -> Path:
    """`data_dir` itself or its `cifar-10-batches-py` child, whichever holds the batches."""
    if not str(data_dir):
        raise ConfigError("data_dir", "no data folder given and synthetic data is off", PROVIDE_DATA_FIX)
    base = Path(data_dir).expanduser()
    for candidate in (base, base / FOLDER):
        if (candidate / TEST_FILE).is_file() or (candidate / META_FILE).is_file():
            return candidate
    problem = f"no CIFAR-10 batches in {base} or {base / FOLDER}" if base.exists() else f"{base} does not exist"
    raise ConfigError("data_dir", problem, _provide_fix(base))


def load(data_dir: str | Path) -> CifarArrays:
    """Read and validate the whole set from a `cifar-10-batches-py` folder (or its parent)."""
    folder = find_folder(data_dir)
    meta = _load_pickle(folder / META_FILE)
    raw_names = meta.get("label_names", ())
    if not isinstance(raw_names, (list, tuple)):
        raise DataFormatError(f"{folder / META_FILE}: label_names is no list ({type(raw_names).__name__})")
    names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in raw_names)
    if len(names) != NUM_CLASSES:
        raise DataFormatError(f"{folder / META_FILE}: expected {NUM_CLASSES} label_names, found {len(names)}")
    parts = [read_batch(folder / name) for name in TRAIN_FILES]
    test_x, test_y = read_batch(folder / TEST_FILE)
    train_x, train_y = (np.concatenate(arrays) for arrays in zip(*parts))
    synthetic = (folder / SYNTHETIC_MARKER).is_file()
    return CifarArrays(train_x, train_y, test_x, test_y, names, synthetic, str(folder))


# -- Download ----------------------------------------------------------------------------------------------------------
def download(dest: str | Path, *, url: str = OFFICIAL_URL, md5: str = OFFICIAL_MD5, timeout: float = 15.0) -> Path:
    """Fetch the official tarball, verify its checksum, extract it under `dest`; returns the batches folder.

    Already present -> nothing fetched. No network -> one error within `timeout` saying how to provide the data.
    """
    check_number("timeout", timeout, 0.0, "pass the seconds to wait for the server, e.g. 15", strict=True)
    dest = Path(dest).expanduser()
    if (dest / FOLDER / TEST_FILE).is_file():
        return dest / FOLDER
    if not hasattr(tarfile, "data_filter"):  # said before the download: the safe extraction below needs it
        problem = f"Python {sys.version.split()[0]} has no tarfile extraction filter (it came in 3.10.12 and 3.11.4)"
        raise ConfigError("data_dir", problem, f"use a newer Python, or {PROVIDE_DATA_FIX}")
    if (dest / FOLDER).exists():  # found out now, not after 170 MB were fetched and checked
        problem = f"{dest / FOLDER} exists but holds no complete set (no {TEST_FILE})"
        raise ConfigError("dest", problem, f"remove {dest / FOLDER} (a partial copy), or pass another --dest")
    made = make_folder(dest, "dest")
    try:
        _fetch_into(dest, url, md5, timeout)
    except BaseException:
        if made:  # nothing of a failed download stays behind
            shutil.rmtree(made, ignore_errors=True)
        raise
    return dest / FOLDER


def _fetch_into(dest: Path, url: str, md5: str, timeout: float) -> None:
    with tempfile.TemporaryDirectory(dir=dest, prefix=".download-") as tmp:
        archive = Path(tmp) / "cifar-10-python.tar.gz"
        try:
            response = urllib.request.urlopen(url, timeout=timeout)  # noqa: SIM115 - closed below
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            why = f"({getattr(exc, 'reason', exc)}); this machine may have no network access"
            problem = f"CIFAR-10 could not be downloaded from {url} {why}"
            raise ConfigError("data_dir", problem, PROVIDE_DATA_FIX) from None
        with response, open(archive, "wb") as out:
            while True:
                try:
                    chunk = response.read(1 << 20)
                except (OSError, TimeoutError) as exc:  # the connection, not this disk
                    raise ConfigError(
                        "data_dir", f"the download from {url} broke off ({exc})", PROVIDE_DATA_FIX
                    ) from None
                if not chunk:
                    break
                try:
                    out.write(chunk)
                except OSError as exc:  # this disk: full, or a file size limit
                    raise ConfigError(
                        "dest",
                        f"cannot write the archive in {dest} ({exc.strerror})",
                        "free space there, or pass another --dest",
                    ) from None
        with open(archive, "rb") as f:
            got = file_digest(f, lambda: hashlib.md5(usedforsecurity=False)).hexdigest()
        if got != md5:
            why = f"checksum mismatch (md5 {got}, expected {md5}); the download is corrupt or not the official archive"
            raise DataFormatError(f"{url}: {why}. Fix: download again, or copy a verified copy to {dest}")
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(tmp, filter="data")  # "data" refuses absolute paths, links out of tmp, devices
        if not (Path(tmp) / FOLDER / TEST_FILE).is_file():
            raise DataFormatError(f"{url}: the archive holds no {FOLDER}/{TEST_FILE}")
        os.replace(Path(tmp) / FOLDER, dest / FOLDER)  # atomic: a half-extracted folder is never visible


# -- Synthetic ---------------------------------------------------------------------------------------------------------
def synthetic_arrays(train: int = 5000, test: int = 1000, seed: int = 0, noise: float = 2.5) -> CifarArrays:
    """Generated images with learnable class structure (not CIFAR content).

    Each class owns a random periodic texture (a smooth colour field on a 32x32 torus) and a faint mean colour. An
    image is its class texture translated by a random amount (with wrap-around), flipped at random, scaled in
    contrast, plus per-pixel noise. Translation makes a pixel-wise linear model weak (it mostly sees the colour),
    while a CNN, which is shift-invariant, learns the textures within a few hundred steps.
    """
    if train < NUM_CLASSES or test < NUM_CLASSES:
        fix = f"use at least {NUM_CLASSES} images in each split"
        raise ConfigError("synthetic size", f"train={train}, test={test} is too small", fix)
    if train > MAX_SYNTHETIC or test > MAX_SYNTHETIC:  # 3 KB an image, several times over while generated
        fix = f"use at most {MAX_SYNTHETIC:,} images a split (the real set has 50,000 and 10,000)"
        raise ConfigError("synthetic size", f"train={train}, test={test} is too large", fix)
    check_int("seed", seed, 0, "pass 0 or a positive seed")
    rng = np.random.default_rng(seed)
    freq = np.fft.fftfreq(32) * 32
    radius = np.hypot(freq[:, None], freq[None, :])
    spectrum = (radius > 0) * (radius <= 4) / (1.0 + radius)  # low, non-zero frequencies only
    phases = rng.normal(size=(NUM_CLASSES, 3, 32, 32)) + 1j * rng.normal(size=(NUM_CLASSES, 3, 32, 32))
    textures = np.fft.ifft2(phases * spectrum).real
    textures /= textures.std(axis=(1, 2, 3), keepdims=True)
    colours = rng.normal(0.0, 0.25, size=(NUM_CLASSES, 3, 1, 1))

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.arange(n) % NUM_CLASSES
        rng.shuffle(labels)
        dy, dx = rng.integers(0, 32, size=(2, n))
        rows = (dy[:, None] + np.arange(32)[None, :]) % 32
        cols = (dx[:, None] + np.arange(32)[None, :]) % 32
        flip = rng.random(n) < 0.5
        cols[flip] = cols[flip, ::-1]
        channels = np.arange(3)[None, :, None, None]
        img = textures[labels[:, None, None, None], channels, rows[:, None, :, None], cols[:, None, None, :]]
        img = img * rng.uniform(0.6, 1.4, size=(n, 1, 1, 1)) + colours[labels]
        img += rng.normal(0.0, noise, size=img.shape)
        return np.clip(128 + 40 * img, 0, 255).astype(np.uint8), labels.astype(np.int64)

    source = _synthetic_source(train, test, seed)
    return CifarArrays(*make(train), *make(test), LABEL_NAMES, synthetic=True, source=source)


def _synthetic_source(train: int, test: int, seed: int) -> str:
    return f"synthetic(train={train}, test={test}, seed={seed})"


def write(arrays: CifarArrays, dest: str | Path) -> Path:
    """Write `arrays` in the official layout under `dest/cifar-10-batches-py` (atomically); returns that folder."""
    folder = Path(dest).expanduser() / FOLDER
    if folder.exists() and not (folder / SYNTHETIC_MARKER).is_file():  # never over a real set (or anything else)
        fix = "choose another --dest for synthetic data (or remove that folder yourself)"
        raise ConfigError("dest", f"{folder} holds a data set that is not synthetic", fix)
    make_folder(folder.parent, "dest")
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".cifar-write-") as parent:
        tmp = Path(parent) / FOLDER
        tmp.mkdir(mode=0o700)
        chunks = np.array_split(np.arange(len(arrays.train_labels)), len(TRAIN_FILES))
        batches = [(name, arrays.train_images[idx], arrays.train_labels[idx]) for name, idx in zip(TRAIN_FILES, chunks)]
        batches.append((TEST_FILE, arrays.test_images, arrays.test_labels))
        for i, (name, images, labels) in enumerate(batches):
            record = {
                b"batch_label": f"{'testing' if name == TEST_FILE else 'training'} batch {i + 1} of 5".encode(),
                b"labels": [int(v) for v in labels],
                b"data": np.ascontiguousarray(images.reshape(len(images), -1)),
                b"filenames": [f"{arrays.kind}_{name}_{j:05d}.png".encode() for j in range(len(labels))],
            }
            with open(tmp / name, "wb") as f:
                pickle.dump(record, f, protocol=2)  # the official files are protocol 2
        names = [n.encode() for n in arrays.label_names]
        meta = {b"label_names": names, b"num_cases_per_batch": int(len(chunks[0])), b"num_vis": 3072}
        with open(tmp / META_FILE, "wb") as f:
            pickle.dump(meta, f, protocol=2)
        if arrays.synthetic:
            (tmp / SYNTHETIC_MARKER).write_text(json.dumps({"synthetic": True, "source": arrays.source}) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)  # atomic: a half-written folder is never visible
    return folder


def write_synthetic(dest: str | Path, train: int = 5000, test: int = 1000, seed: int = 0) -> Path:
    """Generate a synthetic set and write it in the CIFAR-10 layout; returns the batches folder."""
    return write(synthetic_arrays(train, test, seed), dest)


def training_set(data_dir: str | Path, synthetic: bool, *, synthetic_train=5000, synthetic_test=1000, seed=0):
    """What a training run uses: the real set from `data_dir`, or (synthetic=True) a generated one, written to
    `data_dir` once and read back from disk (the same code path as real data), or kept in memory without one."""
    if not synthetic:
        return load(data_dir)
    if not str(data_dir):
        return synthetic_arrays(synthetic_train, synthetic_test, seed)
    folder = Path(data_dir).expanduser() / FOLDER
    marker = folder / SYNTHETIC_MARKER
    wanted = _synthetic_source(synthetic_train, synthetic_test, seed)
    if folder.exists() and not marker.is_file():
        fix = "pass synthetic=False to train on it, or choose another data_dir for synthetic data"
        raise ConfigError("synthetic", f"{folder} holds a real (non-synthetic) data set", fix)
    try:
        stale = json.loads(marker.read_text()).get("source") != wanted if marker.is_file() else True
    except (ValueError, AttributeError):  # an unreadable marker: the set is written again
        stale = True
    if stale:
        write_synthetic(data_dir, synthetic_train, synthetic_test, seed)
    return load(data_dir)


# -- On the training device --------------------------------------------------------------------------------------------
class DeviceData:
    """The data set on the training device as uint8. Batches are cut, cropped (4 px, reflect padded) and flipped by
    one gather over the whole batch; the result is a channels_last tensor normalised in the compute dtype.

    Every rank draws the same permutation and augmentation per epoch (seeded by epoch) and takes its own slice of
    each global batch, so a resumed run sees exactly the batches the interrupted one would have.
    """

    def __init__(self, arrays: CifarArrays, device, input_dtype, rank=0, world_size=1, seed=0, channels_last=True):
        import torch
        import torch.nn.functional as F

        self.device, self.dtype, self.rank, self.world, self.seed = device, input_dtype, rank, world_size, seed
        self.channels_last = channels_last
        # NHWC uint8 on the device: indexing (image, row, col) yields channels_last batches with no extra copy.
        train = torch.from_numpy(arrays.train_images).to(device)
        padded = [F.pad(c.float(), (4, 4, 4, 4), mode="reflect").to(torch.uint8) for c in train.split(8192)]
        self.train = torch.cat(padded).permute(0, 2, 3, 1).contiguous()  # N, 40, 40, 3
        self.train_labels = torch.from_numpy(arrays.train_labels).to(device)
        self.test = torch.from_numpy(arrays.test_images).to(device).permute(0, 2, 3, 1).contiguous()  # N, 32, 32, 3
        self.test_labels = torch.from_numpy(arrays.test_labels).to(device)
        mean, std = torch.tensor(CIFAR_MEAN, device=device), torch.tensor(CIFAR_STD, device=device)
        self.scale = (1.0 / (255.0 * std)).view(1, 3, 1, 1).to(input_dtype)  # x * scale + shift == (x/255 - mean)/std
        self.shift = (-mean / std).view(1, 3, 1, 1).to(input_dtype)
        self.offsets = torch.arange(32, device=device)

    @property
    def train_size(self) -> int:
        return int(self.train.shape[0])

    def _to_input(self, nhwc):
        x = nhwc.permute(0, 3, 1, 2).to(self.dtype) * self.scale + self.shift  # elementwise ops keep channels_last
        return x if self.channels_last else x.contiguous()

    def epoch(self, epoch: int, micro_batch: int, steps: int, accum: int, start: int = 0):
        """Yield (x, y) micro-batches of optimizer steps `start`..`steps`-1 of `epoch` for this rank."""
        import torch

        g = torch.Generator(device=self.device).manual_seed(self.seed * 100_003 + epoch)
        n = self.train_size
        order = torch.randperm(n, generator=g, device=self.device)
        shifts = torch.randint(0, 9, (2, n), generator=g, device=self.device)  # crop offsets in the 40x40 padding
        flips = torch.rand(n, generator=g, device=self.device) < 0.5
        cols_rev = self.offsets.flip(0)
        global_batch = micro_batch * self.world * accum
        for step in range(start, steps):
            for micro in range(accum):
                lo = step * global_batch + (micro * self.world + self.rank) * micro_batch
                idx = order[lo : lo + micro_batch]
                rows = shifts[0, idx, None] + self.offsets  # B, 32
                cols = shifts[1, idx, None] + torch.where(flips[idx, None], cols_rev, self.offsets)
                images = self.train[idx[:, None, None], rows[:, :, None], cols[:, None, :]]
                yield self._to_input(images), self.train_labels[idx]

    def test_batches(self, batch: int):
        """This rank's share of the test set, in order."""
        n = int(self.test.shape[0])
        first, end = self.rank * n // self.world, (self.rank + 1) * n // self.world
        for lo in range(first, end, batch):
            hi = min(lo + batch, end)
            yield self._to_input(self.test[lo:hi]), self.test_labels[lo:hi]
