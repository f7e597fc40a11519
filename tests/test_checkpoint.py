"""labkit.checkpoint's trust: resume unpickles, so COMPLETE.json is HMAC-signed with the run's own key and checked
before DeepSpeed reads a byte; a tampered file, a rewritten manifest, a wrong or missing key are refused."""

from __future__ import annotations

import json
import os
import shutil
import stat

import pytest

from labkit import checkpoint, train
from labkit.errors import ConfigError

BLOB = "mp_rank_00_model_states.pt"


class FakeEngine:
    """Records what DeepSpeed would have unpickled."""

    def __init__(self):
        self.loaded = []

    def load_checkpoint(self, checkpoint_dir, tag):
        self.loaded.append(tag)
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
    step = checkpoint.resume(engine, str(root), world=1, stage=0, say=said.append)
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
        checkpoint.resume(engine, str(tmp_path), world=1, stage=0, say=print)
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
