"""Training checkpoints: DeepSpeed's per-rank files under `step<N>` tags, counted once a manifest proves them whole.

A save writes every rank's files, then rank 0 writes COMPLETE.json (size and sha256 of every file) last and atomically,
so a resume skips a partial or corrupt newest checkpoint and takes the one before. Resuming unpickles (DeepSpeed loads
with weights_only=False), so COMPLETE.json carries an HMAC keyed by the run's own secret (run_key), checked before any
file is read: a manifest rewritten without the key, or another run's checkpoint, is refused. The files are hashed while
they are copied into a private folder of the rank, and DeepSpeed loads that copy: a file swapped on the (shared) disk
after the check is never what gets unpickled.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from labkit import shared_volume
from labkit.compat import file_digest
from labkit.errors import ConfigError

COMPLETE_MARKER = "COMPLETE.json"
KEY_ENV, KEY_FILE = "LABKIT_CHECKPOINT_KEY", "checkpoint.key"
# On Kubernetes: the job's own Secret `<job>-checkpoint`, mounted read-only in every pod (ranks started over ssh see no
# pod env, but do see this file). Pods share uid 1000 and the volume, so a key file there would protect nothing.
MOUNTED_KEY = Path("/var/run/labkit/checkpoint/key")
_NO_KEY_FIX = f"resume with the key the run was written with (${KEY_ENV}, or DIR/{KEY_FILE}), or start a fresh run"
_UNWRITABLE_FIX = (
    f"a cluster job writes only its own {shared_volume.run_dir('<job>')} (kubelet makes it when missing, on some "
    f"storage as root's): make it from the lab first (mkdir {shared_volume.run_dir('<job>')}, or submit from there) "
    "and resubmit; elsewhere pass a folder you can write"
)


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return file_digest(f, "sha256").hexdigest()


def tag_of(step: int) -> str:
    return f"step{step:08d}"


def check_writable(checkpoint_dir: str | Path) -> None:
    """ConfigError, before any training, when this process cannot make files in checkpoint_dir (made when missing):
    one line instead of a rank's traceback at its first save."""
    folder = Path(checkpoint_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        problem = f"cannot write in {folder} as uid {os.geteuid()} ({exc.strerror})"
        raise ConfigError("checkpoint_dir", problem, _UNWRITABLE_FIX) from None


def run_key(checkpoint_dir: str | Path, create: bool = False) -> bytes:
    """The run's HMAC key: ${KEY_ENV}, else the job's mounted Secret (MOUNTED_KEY), else DIR/checkpoint.key, which
    must be this user's own 0600 file (made here, atomically, when create). ConfigError when there is none."""
    if os.environ.get(KEY_ENV):
        return os.environ[KEY_ENV].encode()
    if MOUNTED_KEY.is_file():
        return MOUNTED_KEY.read_bytes().strip()
    path = Path(checkpoint_dir) / KEY_FILE
    if create and not os.path.lexists(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{KEY_FILE}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        try:
            os.link(tmp, path)  # atomic, never replaces: a concurrent maker's key wins, whole
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        problem = f"no checkpoint key: ${KEY_ENV} is unset and {path} is missing"
        raise ConfigError("checkpoint_dir", problem, _NO_KEY_FIX) from None
    except OSError as exc:  # ELOOP: a symlink
        fix = f"remove it; a fresh run makes its own {KEY_FILE}"
        raise ConfigError("checkpoint_dir", f"{path} is not a plain file ({exc.strerror})", fix) from None
    with os.fdopen(fd, "rb") as f:
        st, key = os.fstat(f.fileno()), f.read().strip()
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid != os.geteuid() or mode & 0o077 or not stat.S_ISREG(st.st_mode) or len(key) < 32:
        problem = f"{path} is not your own private key file (owner uid {st.st_uid}, mode {mode:o}, {len(key)} bytes)"
        fix = f"use a folder only you can write; a fresh run makes its {KEY_FILE}"
        raise ConfigError("checkpoint_dir", problem, fix)
    return key


def _signature(manifest: dict, key: bytes) -> str:
    body = json.dumps({k: v for k, v in manifest.items() if k != "hmac"}, sort_keys=True, separators=(",", ":"))
    return hmac.new(key, body.encode(), "sha256").hexdigest()


def write_manifest(tag_dir: Path, meta: dict, key: bytes) -> None:
    """Mark a checkpoint complete: size and sha256 of every file, signed with the run key, written atomically, last."""
    files = {
        str(p.relative_to(tag_dir)): [p.stat().st_size, _sha256(p)]
        for p in sorted(tag_dir.rglob("*"))
        if p.is_file() and p.name != COMPLETE_MARKER
    }
    manifest = {**meta, "files": files}
    tmp = tag_dir / (COMPLETE_MARKER + ".tmp")
    tmp.write_text(json.dumps({**manifest, "hmac": _signature(manifest, key)}, indent=1))
    os.replace(tmp, tag_dir / COMPLETE_MARKER)


def _signed_manifest(tag_dir: Path, key: bytes) -> tuple[dict | None, str]:
    """(manifest, "ok") read once, or (None, why) when there is none to read. A manifest that the run's key did not
    sign raises ConfigError: rewritten, or another run's (an older one would be refused alike)."""
    try:
        manifest = json.loads((tag_dir / COMPLETE_MARKER).read_text())
    except FileNotFoundError:
        return None, "no COMPLETE.json (the save did not finish)"
    except (OSError, ValueError) as exc:
        return None, f"unreadable manifest ({exc})"
    if not isinstance(manifest, dict) or not hmac.compare_digest(str(manifest.get("hmac")), _signature(manifest, key)):
        problem = f"{tag_dir / COMPLETE_MARKER} is not signed with this run's key (rewritten, or another run's)"
        raise ConfigError("checkpoint_dir", problem, _NO_KEY_FIX)
    if not manifest.get("files"):
        return None, "the manifest lists no files"
    return manifest, "ok"


def verify(tag_dir: Path, key: bytes) -> tuple[bool, str]:
    """(ok, reason): a checkpoint is usable when its signed manifest exists and every file on disk matches it (a check
    of the folder as it is now; resume checks the copy it loads instead, see check_files)."""
    manifest, reason = check_files(tag_dir, key)
    return manifest is not None, reason


def _hashed(src: Path, dst: Path | None) -> tuple[int, str] | None:
    """(size, sha256) of src's bytes, copied into the new file dst when given (exactly the bytes hashed), or None when
    src is no plain file (missing, a symlink: never followed, a fifo: never waited on)."""
    try:
        fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        if dst is not None:
            dst.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        digest, size = hashlib.sha256(), 0
        with open(dst, "xb") if dst is not None else nullcontext() as out:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
                if out is not None:
                    out.write(chunk)
    return size, digest.hexdigest()


def check_files(tag_dir: Path, key: bytes, copy_to: Path | None = None) -> tuple[dict | None, str]:
    """(manifest, "ok") when every file matches the signed manifest, else (None, why). With copy_to, the files are
    copied there while hashed: loading copy_to then unpickles exactly the bytes that were checked, whatever happens to
    tag_dir meanwhile (a check of tag_dir followed by a load from it would leave that window open)."""
    manifest, reason = _signed_manifest(tag_dir, key)
    for rel, (size, digest) in (manifest or {}).get("files", {}).items():
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            return None, f"{rel} is not a path inside the checkpoint"
        if (hashed := _hashed(tag_dir / rel, copy_to / rel if copy_to else None)) is None:
            return None, f"{rel} is missing or not a plain file"
        if hashed != (size, digest):
            return None, f"{rel} does not match its checksum (corrupt or truncated)"
    return manifest, reason


@contextmanager
def private_dir() -> Iterator[Path]:
    """A folder only this user can enter (mkdtemp: 0700) under $TMPDIR, removed on leaving, on failure too."""
    with tempfile.TemporaryDirectory(prefix="labkit-resume-") as path:
        yield Path(path)


def tags(checkpoint_dir: str | Path) -> list[tuple[int, Path]]:
    """All step-tagged checkpoint folders, newest first."""
    found = [(int(p.name[4:]), p) for p in Path(checkpoint_dir).glob("step*") if p.is_dir() and p.name[4:].isdigit()]
    return sorted(found, reverse=True)


def latest_complete(checkpoint_dir: str | Path, log=print) -> tuple[int, Path] | None:
    """The newest checkpoint that verifies; reports each newer one it skips and why."""
    key = run_key(checkpoint_dir)
    for step, path in tags(checkpoint_dir):
        ok, reason = verify(path, key)
        if ok:
            return step, path
        log(f"checkpoint {path.name} skipped: {reason}")
    return None


def prune(checkpoint_dir: str | Path, keep: int, saved: int) -> None:
    """After saving step `saved`: keep the `keep` newest complete checkpoints up to it, drop incomplete ones below it,
    and every one above it: those are an interrupted run's, which the resume skipped as unusable and this run replaces
    (counted, a corrupt one could outrank, and so delete, the checkpoints that do load)."""
    found = tags(checkpoint_dir)
    doomed = [p for s, p in found if s > saved or (s < saved and not (p / COMPLETE_MARKER).is_file())]
    doomed += [p for s, p in found if s <= saved and (p / COMPLETE_MARKER).is_file()][keep:]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)


def save(engine, checkpoint_dir: str, step: int, meta: dict, keep: int, say) -> None:
    """Save on all ranks, then (rank 0, after everyone finished) write the manifest that makes it count."""
    import deepspeed.comm as dist

    tag_dir = Path(checkpoint_dir) / tag_of(step)
    key = run_key(checkpoint_dir, create=True) if dist.get_rank() == 0 else b""
    if dist.get_rank() == 0:  # re-saving a step (after a resume): it stops counting as complete until done again
        (tag_dir / COMPLETE_MARKER).unlink(missing_ok=True)
    dist.barrier()
    engine.save_checkpoint(checkpoint_dir, tag=tag_dir.name, client_state={"step": step, "epoch": meta["epoch"]})
    dist.barrier()
    if dist.get_rank() == 0:
        write_manifest(tag_dir, {"step": step, **meta}, key)
        prune(checkpoint_dir, keep, step)
        say(f"checkpoint step={step} saved to {tag_dir}")
    dist.barrier()


def check_same_run(manifest: dict, shape: dict, tag: str) -> None:
    """ConfigError naming the first of `shape`'s settings (TrainConfig.run_shape) that the checkpoint was written
    with otherwise; the world size counts only at ZeRO > 0 (partitioned state)."""
    for name, value in shape.items():
        if name in manifest and manifest[name] != value and (name != "world_size" or shape.get("stage")):
            problem = f"checkpoint {tag} was written with {name}={manifest[name]}, this run has {name}={value}"
            raise ConfigError(name, problem, f"resume with {name}={manifest[name]}, or use a new checkpoint_dir")


def check_resumable(checkpoint_dir: str | Path, shape: dict) -> None:
    """Before any training: the newest signed checkpoint's run had this `shape` (check_same_run)."""
    key = run_key(checkpoint_dir)
    for _, path in tags(checkpoint_dir):
        if (manifest := _signed_manifest(path, key)[0]) is not None:
            return check_same_run(manifest, shape, path.name)


def resume(engine, checkpoint_dir: str, shape: dict, say) -> int | None:
    """Load the newest complete checkpoint of a run of this `shape` into `engine` from a verified private copy; its
    step, or None."""
    key = run_key(checkpoint_dir)
    for step, path in tags(checkpoint_dir):
        with private_dir() as copy_root:
            manifest, reason = check_files(path, key, copy_to=copy_root / path.name)
            if manifest is None:
                say(f"checkpoint {path.name} skipped: {reason}")
                continue
            check_same_run(manifest, shape, path.name)
            if engine.load_checkpoint(str(copy_root), tag=path.name)[0] is None:
                raise RuntimeError(f"DeepSpeed could not load checkpoint {path}")
            return step
    say(f"resume: no complete checkpoint in {checkpoint_dir}; starting from step 0")
    return None
