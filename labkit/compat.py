"""What Python 3.10 lacks (pyproject allows 3.10: the Gaudi image's Python): one stand-in per missing call, each
dropped when the floor moves to 3.11 (tests/test_packaging.py runs vermin against that floor). Standard library only:
ranks import it (through data and checkpoint)."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator
from typing import BinaryIO


def file_digest(f: BinaryIO, digest: str | Callable[[], hashlib._Hash]) -> hashlib._Hash:
    """hashlib.file_digest (3.11): the digest of an open binary file, read in 1 MiB blocks where there is none."""
    if hasattr(hashlib, "file_digest"):
        return hashlib.file_digest(f, digest)  # novermin: guarded
    h = hashlib.new(digest) if isinstance(digest, str) else digest()
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
    return h


@contextlib.contextmanager
def chdir(path: str | os.PathLike) -> Iterator[None]:
    """contextlib.chdir (3.11): work in `path`, back where it was on leaving, on failure too."""
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)
