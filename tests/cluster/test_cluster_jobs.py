"""The interactive MPIJob scenario on a real cluster (kind/minikube + MPI Operator, or a GPU/Gaudi cluster)."""

from __future__ import annotations

import time

import pytest

from labkit.chapters.interactive import parse_metrics, training_command
from labkit.jobs import JobNotFound


@pytest.fixture
def ready_job(cluster_backend, cluster_settings, job_spec):
    job = cluster_backend.submit(job_spec)
    try:
        job.wait_ready(timeout=cluster_settings["ready_timeout"])
        yield job
    finally:
        job.delete()


def test_operator_serves_mpijob_v2beta1(cluster_backend):
    cluster_backend.check_operator()


def test_hostfile_lists_one_line_per_worker(ready_job, job_spec):
    res = ready_job.run(["cat", "/etc/mpi/hostfile"])
    assert res.returncode == 0, res.output
    hosts = [line.split()[0] for line in res.output.splitlines() if line.strip() and not line.startswith("#")]
    assert hosts == [f"{job_spec.name}-worker-{i}.{job_spec.name}.{job_spec.namespace}.svc" for i in range(2)]


def test_failing_command_returns_its_code_and_stderr(ready_job):
    res = ready_job.run(["sh", "-c", "echo 'boom: on purpose' >&2; exit 3"])
    assert res.returncode == 3 and "boom: on purpose" in res.output


def test_interrupted_exec_leaves_nothing_running_in_the_launcher(ready_job):
    with pytest.raises(TimeoutError):
        ready_job.exec(["sh", "-c", "sleep 4321 & sleep 4321 & wait"], timeout=3, on_output=None)
    count = (
        "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done | grep -c '^sleep 4321' || true"
    )
    left = ready_job.run(["sh", "-c", count]).output.strip()
    assert left == "0", f"{left} sleep process(es) survived the interrupted exec"


def test_deepspeed_trains_on_every_worker_through_mpirun(cluster_backend, ready_job, job_spec):
    argv = training_command(cluster_backend, steps=10)
    res = ready_job.run(argv, timeout=1800)
    metrics = parse_metrics(res.output)
    assert res.returncode == 0, res.output[-4000:]
    done = [m for m in metrics if m.get("event") == "done"]
    assert sorted(m["rank"] for m in done) == [0, 1], res.output[-4000:]
    assert all(m["allreduce_sum"] == m["allreduce_expected"] for m in done)
    assert len({m["host"] for m in done}) == 2  # one rank on each worker pod, not on the launcher


def test_list_logs_and_delete(cluster_backend, job_spec, cluster_settings):
    job = cluster_backend.submit(job_spec)
    try:
        job.wait_ready(timeout=cluster_settings["ready_timeout"])
        listed = {s.name: s for s in cluster_backend.list()}
        assert listed[job_spec.name].deadline is not None and not listed[job_spec.name].past_deadline
        assert isinstance(job.logs(), str)
    finally:
        assert job.delete() is True
    end = time.monotonic() + 120
    while time.monotonic() < end:
        try:
            job.status()
        except JobNotFound:
            break
        time.sleep(2)
    with pytest.raises(JobNotFound):
        job.status()
