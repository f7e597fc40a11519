"""labkit.compat's stand-ins for what Python 3.10 lacks, checked on any Python (the 3.11 call removed)."""

from __future__ import annotations

import hashlib
import io
import os

import pytest

from labkit import compat


@pytest.mark.parametrize("has_file_digest", [True, False], ids=["3.11", "3.10"])
def test_file_digest_matches_hashlib(has_file_digest, monkeypatch):
    if not has_file_digest:
        monkeypatch.delattr(hashlib, "file_digest", raising=False)
    data = os.urandom(3 * (1 << 20) + 17)  # more than one block, not a whole number of them
    assert compat.file_digest(io.BytesIO(data), "sha256").hexdigest() == hashlib.sha256(data).hexdigest()
    md5 = compat.file_digest(io.BytesIO(data), lambda: hashlib.md5(usedforsecurity=False))
    assert md5.hexdigest() == hashlib.md5(data).hexdigest()


def test_chdir_returns_where_it_was_also_on_failure(tmp_path):
    before = os.getcwd()
    with compat.chdir(tmp_path):
        assert os.getcwd() == str(tmp_path)
    assert os.getcwd() == before
    with pytest.raises(RuntimeError), compat.chdir(tmp_path):
        raise RuntimeError("inside")
    assert os.getcwd() == before
