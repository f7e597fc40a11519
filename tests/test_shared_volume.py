"""labkit.shared_volume (issue 12): which part of the shared volume a job's pods see, the job folder the lab makes
before submitting, and the one-line failure of a job whose input is missing."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from kit_testing import fake_cluster

from labkit import data, shared_volume, train
from labkit.errors import ConfigError
from labkit.manifests import JobSpec

CLAIM, NAMESPACE = "labkit-shared", "workloads"


@pytest.mark.parametrize(
    ("mount", "allowed"),
    [
        ({"subPath": "runs/bob"}, True),
        ({"subPath": "data", "readOnly": True}, True),
        ({"subPath": "data"}, False),  # the inputs are the lab's: read-only in jobs
        ({"subPath": "runs/alice"}, False),
        ({"subPath": "runs"}, False),
        ({"subPath": "runs", "readOnly": True}, False),
        ({}, False),  # the whole volume
        ({"subPathExpr": "runs/$(JOB)"}, False),
    ],
)
def test_a_job_pod_may_mount_its_own_folder_and_the_inputs_read_only(mount, allowed):
    assert shared_volume.job_may_mount({"name": "shared", "mountPath": "/x", **mount}, "bob") is allowed


def test_a_command_names_only_paths_the_job_mounts():
    args = ["--out=/shared/runs/bob/a", "--data-dir=/shared/data/cifar", "/sharedx", "/data/shared/y",
            "ls /shared/runs/bob/../alice; cat /shared", "--x=/shared/runs/bobby", "/shared/hf-cache"]  # fmt: skip
    assert shared_volume.outside_mounts(args, "bob") == [
        "/shared/runs/alice", "/shared", "/shared/runs/bobby", "/shared/hf-cache"
    ]  # fmt: skip


@pytest.fixture
def lab(tmp_path, monkeypatch):
    """This process as the lab pod: the whole claim mounted (here: a folder whose root is like nfs-client's, 0777)."""
    root = tmp_path / "shared"
    root.mkdir()
    root.chmod(0o777)
    monkeypatch.setattr(shared_volume, "LAB_MOUNT", root)
    monkeypatch.setenv(shared_volume.CLAIM_ENV, CLAIM)
    monkeypatch.setenv(shared_volume.NAMESPACE_ENV, NAMESPACE)
    return root


def test_the_lab_makes_the_job_folder_uid_1000_can_write_whatever_the_storage(lab):
    made = shared_volume.make_job_folder("bob", NAMESPACE, CLAIM)
    assert made == lab / "runs" / "bob" and made.stat().st_uid == os.geteuid()
    assert stat.S_IMODE(made.stat().st_mode) == 0o700  # the job's pods run as this uid: nobody else needs it
    # data and runs as kubelet would make them (the root's mode), so kubelet can still add a folder in runs
    assert {stat.S_IMODE((lab / name).stat().st_mode) for name in ("data", "runs")} == {0o777}
    (made / "checkpoint").write_text("kept")
    assert shared_volume.make_job_folder("bob", NAMESPACE, CLAIM) == made and (made / "checkpoint").is_file()


@pytest.mark.parametrize(("claim", "namespace"), [("other-claim", NAMESPACE), (CLAIM, "alice")])
def test_nothing_is_made_for_another_claim_or_namespace_or_outside_the_lab(lab, monkeypatch, claim, namespace):
    assert shared_volume.make_job_folder("bob", namespace, claim) is None
    monkeypatch.delenv(shared_volume.CLAIM_ENV)  # a laptop: kubelet makes the folder
    assert shared_volume.make_job_folder("bob", NAMESPACE, CLAIM) is None
    assert list(lab.iterdir()) == []


def test_a_planted_link_in_place_of_the_job_folder_or_an_unwritable_volume_is_one_error(lab, tmp_path, monkeypatch):
    def refused(*args, **kwargs):  # a volume the lab may not write (chmod would not stop root, who runs the tests)
        raise PermissionError(13, "Permission denied")

    with monkeypatch.context() as patched:
        patched.setattr(Path, "mkdir", refused)  # not os.mkdir: 3.10's pathlib bound it at import
        with pytest.raises(ConfigError) as exc:
            shared_volume.make_job_folder("alice", NAMESPACE, CLAIM)
    assert exc.value.field == "pvc_name" and exc.value.problem == f"cannot make {lab / 'data'} (Permission denied)"
    (lab / "runs").mkdir()
    (lab / "runs" / "bob").symlink_to(tmp_path)
    with pytest.raises(ConfigError) as exc:
        shared_volume.make_job_folder("bob", NAMESPACE, CLAIM)
    assert exc.value.field == "name" and "is not a folder" in exc.value.problem


def test_submitting_from_the_lab_makes_the_folder_before_the_job(lab):
    with fake_cluster() as (api, backend):
        backend.submit(JobSpec(name="bob"))
        assert ("/apis/kubeflow.org/v2beta1", "mpijobs", NAMESPACE, "bob") in api.objects
    assert (lab / "runs" / "bob").is_dir()


def test_a_job_whose_input_is_missing_fails_with_one_line_naming_the_path_and_the_fix(tmp_path):
    """In a job /shared/data is read-only and written from the lab: the rank says so in one line, no traceback."""
    missing = f"{shared_volume.DATA_DIR}/cifar-10-batches-py"
    with pytest.raises(ConfigError) as exc:
        data.find_folder(missing)
    assert exc.value.problem == f"{missing} does not exist"
    assert f"labkit data download --dest {shared_volume.DATA_DIR}" in exc.value.fix and "in the lab" in exc.value.fix
    rank = [sys.executable, "-m", "labkit.ranks.train", f"--data-dir={missing}", "--device=cpu", "--no-progress"]
    out = subprocess.run(rank, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    lines = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
    assert lines == [f"LABKIT_RANK_ERROR rank=0 ConfigError: data_dir: {missing} does not exist. Fix: {exc.value.fix}"]


def test_a_job_that_cannot_write_its_folder_fails_before_training_with_one_line(tmp_path):
    """Where kubelet made the job's folder root's (storage with neither nfs-client's 0777 nor fsGroup, submitted from
    outside the lab) or a command names a read-only path: one ConfigError before any rank trains."""
    (tmp_path / "in-the-way").write_text("a file")
    cfg = train.TrainConfig(synthetic=True, device="cpu", checkpoint_dir=str(tmp_path / "in-the-way" / "ckpt"))
    with pytest.raises(ConfigError) as exc:
        cfg.resolved()
    assert exc.value.field == "checkpoint_dir" and exc.value.problem.startswith(f"cannot write in {cfg.checkpoint_dir}")
    assert "make it from the lab first (mkdir /shared/runs/<job>" in exc.value.fix
