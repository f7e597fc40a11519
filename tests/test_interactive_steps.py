"""Notebook 03's separate steps: the fields the YAML view points at, the commands shown beside each step (they must
be commands the CLI accepts), and the job deleted at kernel exit when a later cell fails."""

from __future__ import annotations

import atexit
import shlex
import signal
import subprocess
import sys

import pytest
from kit_testing import kit_processes, wait_for_no_kit_processes, wait_until

from labkit.chapters import interactive
from labkit.cli import build_parser
from labkit.errors import ConfigError
from labkit.jobs import LocalBackend
from labkit.jobs.base import EXEC_TAG, ExecResult


@pytest.fixture
def plan(tmp_path):
    return interactive.plan_interactive_job(device="cpu", workers=2, deadline_minutes=5, jobs_dir=str(tmp_path))


def test_the_yaml_view_points_at_the_fields_that_matter(plan):
    fields = {r["field"]: r["value"] for r in plan.key_fields()}
    assert fields["spec.mpiReplicaSpecs.Launcher...command"] == "sleep infinity"
    assert fields["spec.runPolicy.activeDeadlineSeconds"] == "300" and fields["spec.slotsPerWorker"] == "1"
    assert fields["spec.launcherCreationPolicy"] == "WaitForWorkersReady" and fields["Worker...readinessProbe"] == "yes"


def test_the_plans_summary_wraps_its_prose_at_words_and_keeps_the_command_on_one_line(plan):
    """The H100 run's page broke "(picked on this machine = automatic ...)" and the object list mid-word at the
    output's edge; the training command stays one line, to copy into a shell whole."""
    lines = plan.describe().splitlines()
    *prose, train = lines
    assert train == f"train        {plan.command_line}" and all(len(line) <= 100 for line in prose), lines
    assert len(prose) > 5 and all(line[:13].strip() or line[13] != " " for line in prose)  # continued under the value
    objects = [f"{o['kind']}/{o['metadata']['name']}" for o in plan.objects if o["kind"] != "MPIJob"]
    assert objects and all(any(name in line for line in prose) for name in objects)  # each one whole, on one line


@pytest.mark.parametrize("step", ["submit", "wait", "hostfile", "shell", "delete"])
def test_each_step_shows_a_kubectl_line_and_a_labkit_line_the_cli_accepts(plan, step):
    kubectl, labkit = (line.split(":", 1)[1].strip() for line in plan.equivalents(step).splitlines())
    assert kubectl.startswith("kubectl ") and "-n workloads" in kubectl
    argv = shlex.split(labkit.split("   #")[0])
    assert argv[0] == "labkit"
    args = build_parser().parse_args(argv[1:])  # exits (SystemExit) on a flag the CLI does not have
    assert args.backend == "local" and args.namespace == "workloads"
    if step in ("hostfile", "shell"):
        assert "/etc/mpi/hostfile" in " ".join(args.argv)


def test_the_submit_line_carries_the_queue_and_proxy_the_notebook_was_given(tmp_path):
    plan = interactive.plan_interactive_job(device="cpu", workers=2, jobs_dir=str(tmp_path), queue="lab-queue",
                                            http_proxy="http://proxy.corp:3128", no_proxy="10.0.0.0/8")  # fmt: skip
    labkit = plan.equivalents("submit").splitlines()[1].split(":", 1)[1].strip()
    args = build_parser().parse_args(shlex.split(labkit)[1:])
    assert (args.queue, args.http_proxy, args.no_proxy) == ("lab-queue", "http://proxy.corp:3128", "10.0.0.0/8")
    assert args.https_proxy is None  # defaults to the HTTP proxy, on the command line as in the notebook
    assert plan.spec.queue == "lab-queue" and "kueue.x-k8s.io/queue-name" in plan.manifest_details("MPIJob")


def test_an_unknown_step_is_refused(plan):
    with pytest.raises(ConfigError) as e:
        plan.equivalents("launch")
    assert e.value.field == "step"


def test_a_job_left_by_a_failed_cell_is_deleted_when_the_kernel_exits(plan, monkeypatch):
    registered = []
    monkeypatch.setattr(atexit, "register", lambda fn, *a: registered.append((fn, a)))
    job = plan.backend.submit(plan.spec)
    try:
        interactive.delete_at_exit(job)
        assert [s.name for s in plan.backend.list()] == [plan.spec.name]
        for fn, a in registered:  # what the interpreter does at exit
            fn(*a)
        assert plan.backend.list() == []
        fn(*a)  # a second delete (the notebook's own step 5 came first) is quiet
    finally:
        job.delete()
    assert isinstance(plan.backend, LocalBackend)


KERNEL = """
import os, sys
from labkit.chapters import interactive
plan = interactive.plan_interactive_job(device="cpu", workers=2, deadline_minutes=5, jobs_dir=sys.argv[1])
job = plan.backend.submit(plan.spec)
job.wait_ready(30)
interactive.delete_at_exit(job)
print(job.name, flush=True)
os.kill(os.getpid(), 9)  # the OOM killer, `kill -9`, a killed runner: no atexit runs
"""


def test_a_job_whose_kernel_is_killed_outright_stops_with_it(tmp_path):
    """A kernel killed with SIGKILL ran no atexit: notebook 03's local job ran on to its 30-minute deadline, and the
    next run of the notebook failed ('a local job workloads/nb03 is already running')."""
    kernel = subprocess.run([sys.executable, "-c", KERNEL, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert kernel.returncode == -signal.SIGKILL, kernel.stderr[-2000:]
    backend, name = LocalBackend(root=tmp_path), kernel.stdout.split()[0]
    assert wait_until(lambda: backend.status(name).phase != "Running", 20), backend.status(name)
    assert backend.status(name).phase == "OwnerExited"
    assert not wait_for_no_kit_processes(), kit_processes()
    again = backend.submit(interactive.plan_interactive_job(device="cpu", workers=2, jobs_dir=str(tmp_path)).spec)
    again.delete()  # the name is free for the next run


def test_the_closing_paragraph_reports_this_runs_job_exec_and_ranks(plan):
    rows = interactive.hostfile_rows("# a comment\nlocalhost slots=2\n")
    metrics = [{"event": "step", "rank": r, "step": s, "loss": 1.0 / s + r, "world_size": 2} for r in (0, 1)
               for s in (1, 2, 3)]  # fmt: skip
    metrics += [{"event": "done", "rank": r, "world_size": 2, "allreduce_sum": 3, "allreduce_expected": 3,
                 "backend": "gloo", "zero_stage": 1} for r in (0, 1)]  # fmt: skip
    summary = interactive.summarize_training(metrics, 0)
    ok = ExecResult(returncode=0, output="", duration_s=12.4)
    note = interactive.closing_note(plan, rows, ok, summary, deleted=True)
    assert f"job `{plan.spec.namespace}/{plan.spec.name}` (2 worker(s) x 1 slot(s))" in note
    assert "listed 1 host line(s) with 2 slot(s)" in note and "exited with code **0** after 12 s:" in note
    assert "2 rank(s) reported (world size 2, backend gloo, ZeRO stage 1), 3 step(s) each" in note
    assert "the mean loss went from 1.500 to 0.833." in note and "held on every rank" in note
    assert note.endswith("The job was deleted (the backend no longer lists it).")
    dead = ExecResult(returncode=1, output=f"{EXEC_TAG}rank 1 died: exit code 9\n", duration_s=3.0)
    note = interactive.closing_note(plan, rows, dead, interactive.summarize_training([], 1), deleted=False)
    assert "exited with code **1** after 3 s (rank 1 died: exit code 9):" in note and "no rank reported a" in note
    assert note.endswith("The job was NOT deleted.")
    died = [{"event": "step", "rank": 0, "step": 1, "loss": 1.0, "world_size": 2}]  # rank 0 reported, then died
    note = interactive.closing_note(plan, rows, dead, interactive.summarize_training(died, 1), deleted=True)
    assert "1 rank(s) reported (world size 2" in note and "The all-reduce check did NOT hold." in note


def test_ranks_that_stopped_apart_are_not_said_to_have_run_the_same_steps(plan):
    metrics = [{"event": "step", "rank": 0, "step": s, "loss": 1.0, "world_size": 2} for s in (1, 2, 3, 4, 5)]
    metrics += [{"event": "step", "rank": 1, "step": s, "loss": 1.0, "world_size": 2} for s in (1, 2, 3, 4)]
    dead = ExecResult(returncode=1, output=f"{EXEC_TAG}rank 1 died: exit code 9\n", duration_s=3.0)
    note = interactive.closing_note(plan, [], dead, interactive.summarize_training(metrics, 1), deleted=True)
    assert "4 to 5 step(s) (the ranks stopped apart)" in note and "step(s) each" not in note


def test_a_deadline_too_far_is_named_in_minutes(tmp_path):
    with pytest.raises(ConfigError) as e:
        interactive.plan_interactive_job(device="cpu", deadline_minutes=50_000, jobs_dir=str(tmp_path))
    assert e.value.field == "deadline_minutes" and "30 days" in e.value.problem  # not deadline_seconds


def test_exec_again_repeats_the_learners_own_command_and_says_when_the_job_has_ended(tmp_path):
    """Step 4 with `again_command` empty rebuilt the chapter's openmpi command, also for a learner whose own
    train_command ran (Open MPI missing: the one thing they were told to work around), and exec'd into a job its
    deadline had ended (JobNotReady stopped the notebook)."""
    plan = interactive.plan_interactive_job(device="cpu", workers=1, jobs_dir=str(tmp_path),
                                            train_command="python -c \"print('own command')\"")  # fmt: skip
    job = plan.backend.submit(plan.spec)
    try:
        job.wait_ready(20)
        text = interactive.exec_again(plan, job)
        assert text.startswith("$ python -c") and "exit code 0" in text and "still lives: Running" in text
        job.delete()
        plan.backend.submit(plan.spec)  # a fresh one, then ended as a deadline ends it
        plan.backend._stop(plan.backend.job_dir(plan.spec.name))
        ended = interactive.exec_again(plan, job)
        assert ended.startswith("the job is Deleted") and "nothing runs in it any more" in ended
    finally:
        job.delete()


def test_a_command_whose_ranks_reported_nothing_says_so_instead_of_a_verdict(plan):
    """A train_command like `hostname` (or a training dead before any rank reported): 'Your prediction: 2; the answer:
    0: not yet', 'the ranks reported 0' and '0 rank(s) reported (world size 0, backend None ...) The all-reduce check
    did NOT hold'."""
    rows = interactive.hostfile_rows("localhost slots=2\n")
    summary = interactive.summarize_training([], 0)
    ok = ExecResult(returncode=0, output="vm-1\n", duration_s=0.4)
    check = interactive.check_world_size_prediction(2, summary)
    assert "no rank reported a world size" in check and "not yet" not in check and "answer: 0" not in check
    assert "set `my_world_size`" in interactive.check_world_size_prediction(None, summary)
    solution = interactive.world_size_solution(plan, rows, summary)
    assert "2 rank(s)" in solution and "reported 0" not in solution and "no rank reported a world size" in solution
    note = interactive.closing_note(plan, rows, ok, summary, deleted=True)
    assert "exited with code **0**" in note and "no rank reported a world size" in note
    assert "world size 0" not in note and "backend None" not in note and "all-reduce" not in note
    assert note.endswith("The job was deleted (the backend no longer lists it).")
    assert interactive.loss_view([], summary).startswith("No loss chart: no rank reported a world size")
    metrics = [{"event": "step", "rank": r, "step": 1, "loss": 1.0, "world_size": 2} for r in (0, 1)]
    reported = interactive.summarize_training(metrics, 0)
    assert "**right**" in interactive.check_world_size_prediction(2, reported)
    assert "the ranks reported 2" in interactive.world_size_solution(plan, rows, reported)
    assert not isinstance(interactive.loss_view(metrics, reported), str)  # the chart


def test_the_training_bar_appears_only_when_rank_0_reports_a_step_of_an_unknown_count():
    """A custom command (no known step count) that reports no step left a bar 'rank 0 steps: 0step'."""
    import io

    quiet = interactive.TrainingProgress(total_steps=None, stream=io.StringIO())
    quiet("vm-1\n")
    quiet.close()
    assert quiet.bar is None
    counted = interactive.TrainingProgress(total_steps=None, stream=io.StringIO())
    counted('LABKIT_METRIC {"event": "step", "rank": 0, "world_size": 1, "step": 1, "loss": 1.0}\n')
    counted.close()
    assert counted.bar.n == 1


def _drawn_y_labels(fig) -> list[str]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    ax = next(a for a in fig.axes if a.get_yscale() == "log")
    low, high = ax.get_ylim()
    ticks = ax.yaxis.get_major_ticks() + ax.yaxis.get_minor_ticks()
    return [t.label1.get_text() for t in ticks if t.label1.get_text() and low <= t.get_loc() <= high]


def test_a_log_scale_loss_chart_labels_its_axis_in_plain_numbers():
    """Notebook 03's loss chart (0.13 to 0.8) read '6×10⁻¹, 4×10⁻¹, 3×10⁻¹, 2×10⁻¹' and 04's '3×10⁰ ... 10⁻²': a loss
    axis reads 0.6, 0.4, 0.3, 0.2 and 3, 1, 0.1, 0.01, with at least two labels in view."""
    from labkit.plots.training import loss_figure, training_curves_figure

    shard = [{"event": "step", "rank": 0, "step": s, "loss": 0.8 * 0.94**s, "world_size": 1} for s in range(1, 31)]
    cifar = [{"kind": "step", "step": s, "loss": 3 * 0.93**s + 0.01} for s in range(1, 145)]
    figures = {
        "03": interactive.loss_view(shard, interactive.summarize_training(shard, 0)),
        "04": training_curves_figure(
            cifar
            + [{"kind": "epoch", "epoch": 1, "step": 144, "train_acc": 0.9, "test_acc": 0.9, "images_per_s": 1000.0}]
        ),
        "06": loss_figure({"rank 0": [2.3 * 0.9**s for s in range(40)]}, "loss"),
    }
    for chapter, fig in figures.items():
        labels = _drawn_y_labels(fig)
        assert len(labels) >= 2, (chapter, labels)
        for label in labels:
            float(label.replace("\N{MINUS SIGN}", "-"))  # a plain number, not mathtext ('$\\mathdefault')
