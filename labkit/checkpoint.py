"""Training checkpoints: DeepSpeed's per-rank files under `step<N>` tags, counted once a manifest proves them whole.

A save writes every rank's files, then rank 0 writes COMPLETE.json (size and sha256 of every file) last and atomically,
so a resume skips a partial or corrupt newest checkpoint and takes the one before.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from labkit.errors import ConfigError

COMPLETE_MARKER = "COMPLETE.json"


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def tag_of(step: int) -> str:
    return f"step{step:08d}"


def write_manifest(tag_dir: Path, meta: dict) -> None:
    """Mark a checkpoint complete: sizes and sha256 of every file, written atomically, last."""
    files = {
        str(p.relative_to(tag_dir)): [p.stat().st_size, _sha256(p)]
        for p in sorted(tag_dir.rglob("*"))
        if p.is_file() and p.name != COMPLETE_MARKER
    }
    tmp = tag_dir / (COMPLETE_MARKER + ".tmp")
    tmp.write_text(json.dumps({**meta, "files": files}, indent=1))
    os.replace(tmp, tag_dir / COMPLETE_MARKER)


def verify(tag_dir: Path) -> tuple[bool, str]:
    """(ok, reason): a checkpoint is usable when its manifest exists and every file matches it."""
    try:
        manifest = json.loads((tag_dir / COMPLETE_MARKER).read_text())
    except FileNotFoundError:
        return False, "no COMPLETE.json (the save did not finish)"
    except (OSError, ValueError) as exc:
        return False, f"unreadable manifest ({exc})"
    for rel, (size, digest) in manifest.get("files", {}).items():
        p = tag_dir / rel
        if not p.is_file():
            return False, f"{rel} is missing"
        if p.stat().st_size != size or _sha256(p) != digest:
            return False, f"{rel} does not match its checksum (corrupt or truncated)"
    return (True, "ok") if manifest.get("files") else (False, "the manifest lists no files")


def tags(checkpoint_dir: str | Path) -> list[tuple[int, Path]]:
    """All step-tagged checkpoint folders, newest first."""
    root = Path(checkpoint_dir)
    found = [(int(p.name[4:]), p) for p in root.glob("step*") if p.is_dir() and p.name[4:].isdigit()]
    return sorted(found, reverse=True)


def latest_complete(checkpoint_dir: str | Path, log=print) -> tuple[int, Path] | None:
    """The newest checkpoint that verifies; reports each newer one it skips and why."""
    for step, path in tags(checkpoint_dir):
        ok, reason = verify(path)
        if ok:
            return step, path
        log(f"checkpoint {path.name} skipped: {reason}")
    return None


def prune(checkpoint_dir: str | Path, keep: int) -> None:
    """Keep the `keep` newest complete checkpoints; drop incomplete leftovers older than the newest complete one."""
    complete = [(s, p) for s, p in tags(checkpoint_dir) if (p / COMPLETE_MARKER).is_file()]
    newest = complete[0][0] if complete else -1
    doomed = [p for _, p in complete[keep:]]
    doomed += [p for s, p in tags(checkpoint_dir) if s < newest and not (p / COMPLETE_MARKER).is_file()]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)


def save(engine, checkpoint_dir: str, step: int, meta: dict, keep: int, say) -> None:
    """Save on all ranks, then (rank 0, after everyone finished) write the manifest that makes it count."""
    import deepspeed.comm as dist

    tag_dir = Path(checkpoint_dir) / tag_of(step)
    if dist.get_rank() == 0:  # re-saving a step (after a resume): it stops counting as complete until done again
        (tag_dir / COMPLETE_MARKER).unlink(missing_ok=True)
    dist.barrier()
    engine.save_checkpoint(checkpoint_dir, tag=tag_dir.name, client_state={"step": step, "epoch": meta["epoch"]})
    dist.barrier()
    if dist.get_rank() == 0:
        write_manifest(tag_dir, {"step": step, **meta})
        prune(checkpoint_dir, keep)
        say(f"checkpoint step={step} saved to {tag_dir}")
    dist.barrier()


def resume(engine, checkpoint_dir: str, world: int, stage: int, say) -> int | None:
    """Load the newest complete checkpoint into `engine`; its step, or None when there is none."""
    found = latest_complete(checkpoint_dir, log=say)
    if found is None:
        say(f"resume: no complete checkpoint in {checkpoint_dir}; starting from step 0")
        return None
    step, path = found
    written_by = json.loads((path / COMPLETE_MARKER).read_text()).get("world_size")
    if written_by != world and stage > 0:
        raise ConfigError(
            "world_size",
            f"checkpoint {path.name} was written by {written_by} ranks at ZeRO-{stage} (partitioned state)",
            f"resume with {written_by} ranks, or use a new checkpoint_dir",
        )
    if engine.load_checkpoint(checkpoint_dir, tag=path.name)[0] is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {path}")
    return step
