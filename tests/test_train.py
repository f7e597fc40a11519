"""labkit.train / labkit.chapters.cifar: validation, the DeepSpeed config, the device-resident data path, checkpoints,
real training in-process and through the launchers, and a killed rank followed by --resume."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from kit_testing import ROOT, launched_line, without_port

from labkit import checkpoint, data, devices, launch, tabular, train
from labkit.chapters import cifar
from labkit.errors import ConfigError, LaunchError
from labkit.model import build_model

TINY = dict(
    synthetic=True,
    synthetic_train=640,
    synthetic_test=200,
    max_train=640,
    max_test=200,
    width=0.25,
    micro_batch=32,
    device="cpu",
)


# ------------------------------------------------------------------------------------------ validation (no work)


@pytest.mark.parametrize(
    "change, field",
    [
        (dict(model="vgg"), "model"),
        (dict(dtype="int8"), "dtype"),
        (dict(stage=4), "stage"),
        (dict(amp="apex"), "amp"),
        (dict(optimizer="lamb"), "optimizer"),
        (dict(device="tpu"), "device"),
        (dict(epochs=0), "epochs"),
        (dict(micro_batch=-1), "micro_batch"),
        (dict(dtype="fp16"), "dtype"),  # fp16 on a CPU
        (dict(resume=True), "resume"),  # nothing to resume from
        (dict(synthetic=False), "data_dir"),  # no data and synthetic off
        (dict(global_batch=100), "global_batch"),  # not divisible by 3 ranks
        (dict(global_batch=96, micro_batch=16), "micro_batch"),  # both given and inconsistent
        (dict(momentum=1.0), "momentum"),  # torch's SGD takes it and diverges
        (dict(momentum=-0.5), "momentum"),
        (dict(seed=-1), "seed"),  # numpy would refuse it only while making the data
    ],
)
def test_bad_settings_raise_one_error_naming_the_field(change, field):
    cfg = train.TrainConfig(**{**dict(synthetic=True, device="cpu"), **change})
    with pytest.raises(ConfigError) as exc:
        cfg.resolved(world_size=3)
    assert exc.value.field == field
    assert "Fix:" in str(exc.value)


def test_a_fresh_run_refuses_a_folder_with_checkpoints_of_another_run(tmp_path):
    _fake_checkpoint(tmp_path, 40)
    with pytest.raises(ConfigError) as exc:
        train.TrainConfig(synthetic=True, device="cpu", checkpoint_dir=str(tmp_path)).resolved()
    assert exc.value.field == "checkpoint_dir" and "step00000040" in exc.value.problem and "resume" in exc.value.fix
    train.TrainConfig(synthetic=True, device="cpu", checkpoint_dir=str(tmp_path), resume=True).resolved()


def test_a_resume_refuses_a_run_of_another_shape_before_any_work(tmp_path):
    """What DeepSpeed's load would fail on deep inside (another model, width, stage; ranks at ZeRO > 0), or a changed
    batch that would resume at a step meaning other images: one error naming the field, from resolved()."""
    key = checkpoint.run_key(tmp_path, create=True)
    tag = tmp_path / checkpoint.tag_of(20)
    tag.mkdir()
    (tag / "model.pt").write_bytes(b"weights")
    written = train.TrainConfig(synthetic=True, device="cpu", stage=1, micro_batch=32).resolved(world_size=2)
    checkpoint.write_manifest(tag, {"step": 20, **written.run_shape(2)}, key)
    same = dict(synthetic=True, device="cpu", stage=1, micro_batch=32, checkpoint_dir=str(tmp_path), resume=True)
    train.TrainConfig(**same).resolved(world_size=2)
    for change, world, field in [
        (dict(micro_batch=64), 2, "global_batch"),
        (dict(stage=2), 2, "stage"),
        (dict(model="lenet"), 2, "model"),
        (dict(width=0.5), 2, "width"),
        ({}, 4, "global_batch"),  # 32 x 4 ranks
        (dict(micro_batch=16), 4, "world_size"),  # the same 64 images a step, but ZeRO-1 state in 2 parts
    ]:
        with pytest.raises(ConfigError) as exc:
            train.TrainConfig(**{**same, **change}).resolved(world_size=world)
        assert exc.value.field == field, (change, world, exc.value)
        assert "step00000020 was written with" in exc.value.problem and "new checkpoint_dir" in exc.value.fix


def test_a_deepspeed_config_files_batch_is_the_runs_or_refused(tmp_path):
    """DeepSpeed steps by the file's batch: the run takes it (so its step count, schedule and checkpoints agree), and
    batch flags that say otherwise, or a file whose sizes do not multiply out, are refused before any work."""
    path = tmp_path / "ds.json"

    def resolved(ds: dict, world: int = 2, **flags) -> train.TrainConfig:
        path.write_text(json.dumps(ds))
        return train.TrainConfig(synthetic=True, device="cpu", deepspeed_config=str(path), **flags).resolved(world)

    cfg = resolved({"train_micro_batch_size_per_gpu": 16, "gradient_accumulation_steps": 2})
    assert (cfg.micro_batch, cfg.grad_accum, cfg.global_batch) == (16, 2, 64)
    assert resolved({"train_batch_size": 64, "train_micro_batch_size_per_gpu": 8}).grad_accum == 4  # DeepSpeed's rule
    assert resolved({"train_batch_size": 64}).micro_batch == 32
    assert resolved({"train_micro_batch_size_per_gpu": 16}, grad_accum=1, micro_batch=16).global_batch == 32
    assert train.deepspeed_config(cfg, 10) == json.loads(path.read_text())  # what the run hands DeepSpeed
    for ds, flags, problem in [
        ({"train_micro_batch_size_per_gpu": 16, "gradient_accumulation_steps": 2}, dict(grad_accum=3), "differs"),
        ({"train_micro_batch_size_per_gpu": 16}, dict(global_batch=64), "differs"),
        ({"train_batch_size": 60, "train_micro_batch_size_per_gpu": 16}, {}, "train_batch_size 60 !="),
        ({"optimizer": {"type": "SGD"}}, {}, "needs train_batch_size or train_micro_batch_size_per_gpu"),
        ({"train_batch_size": "auto"}, {}, "positive whole numbers"),
    ]:
        with pytest.raises(ConfigError) as exc:
            resolved(ds, **flags)
        assert exc.value.field == "deepspeed_config" and problem in exc.value.problem, exc.value
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="deepspeed_config: cannot read"):
        train.TrainConfig(synthetic=True, device="cpu", deepspeed_config=str(path)).resolved()


def test_the_cli_keeps_a_flag_given_at_its_default_and_leaves_the_rest_automatic(capsys):
    """`--width 1.0` on a CPU is the learner's choice, not "automatic" (0.5 there): only flags left out follow the
    device."""
    from labkit.cli import main

    assert main(["train", "--synthetic", "--device", "cpu", "--world-size", "2", "--dry-run", "--width", "1.0"]) == 0
    given = capsys.readouterr().out
    assert main(["train", "--synthetic", "--device", "cpu", "--world-size", "2", "--dry-run"]) == 0
    automatic = capsys.readouterr().out
    assert "--width" not in given.splitlines()[-1] and "--width 0.5" in automatic.splitlines()[-1]


@pytest.mark.parametrize("value", ["0", "-1", "nan"])
def test_the_cli_refuses_a_timeout_that_is_no_time_before_planning(value, capsys):
    """--timeout 0 was refused only after the plan printed; nan meant no deadline at all."""
    from labkit.cli import main

    assert main(["train", "--synthetic", "--device", "cpu", "--timeout", value]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("labkit: error: --timeout: must be a") and captured.out == ""


def test_the_cli_help_gives_the_sizes_the_device_picks_not_the_rank_defaults():
    """`labkit train --help` said `--max-train ... (0 = all) (default: 0)` and `--width (default: 1.0)`, but left out
    (or 0) on a CPU they are 2,000 images at width 0.5."""
    from labkit.cli import build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: a.help for a in commands.choices["train"]._actions}
    for name, on_cpu in cifar.CPU_SIZES.items():
        cpu, accelerator = (f"{v:,}" if v else "all" for v in (on_cpu, cifar.ACCELERATOR_SIZES[name]))
        assert f"by device: CPU {cpu}, accelerator {accelerator})" in helps[name] and "(default:" not in helps[name]
    for name in cifar.ZERO_MEANS_AUTO:  # 0 is automatic too, not "all"
        assert "0 = all" not in helps[name] and "(0 or left out: by device" in helps[name]
    assert helps["epochs"].endswith("(default: 2)")  # the others are what the CLI passes


def test_python_m_labkit_train_is_the_ranks_command_line():
    """`python -m labkit.train` (nanoGPT's habit) runs the rank entry instead of importing a library and exiting 0."""
    proc = subprocess.run([sys.executable, "-m", "labkit.train", "--seed", "-1", "--synthetic"], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)  # fmt: skip
    assert proc.returncode != 0 and "seed: must be a whole number >= 0" in proc.stdout + proc.stderr


def test_automatic_values_follow_the_device_and_the_ranks():
    cfg = train.TrainConfig(synthetic=True, device="cpu", global_batch=96).resolved(world_size=3)
    assert (cfg.dtype, cfg.micro_batch, cfg.global_batch, cfg.lr) == ("fp32", 32, 96, 2e-3)
    cfg = train.TrainConfig(synthetic=True, device="cpu", optimizer="sgd", micro_batch=64).resolved(world_size=2)
    assert cfg.global_batch == 128 and cfg.lr == pytest.approx(0.05)


def test_cli_rejects_a_bad_batch_before_starting_anything():
    start = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "labkit",
            "train",
            "--synthetic",
            "--device",
            "cpu",
            "--world-size",
            "3",
            "--global-batch",
            "100",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert "labkit: error: global_batch: 100 images are not divisible by world_size x grad_accum = 3 x 1" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert time.monotonic() - start < 30


def test_world_size_0_picks_two_cpu_ranks_on_a_cpu_and_says_why(monkeypatch):
    plan = cifar.plan(device="cpu")
    assert (plan.world_size, plan.launcher) == (2, "deepspeed") and "2 CPU ranks" in plan.why
    assert "--num_gpus 2" in plan.command_text() and str(plan.workdir) not in plan.command_text()
    assert cifar.plan(device="cpu", launcher="inprocess").world_size == 1
    monkeypatch.setattr(devices, "cuda_status", lambda: (True, "4 CUDA devices"))
    monkeypatch.setattr(devices, "device_count", lambda device: 4)
    plan = cifar.plan(device="cuda")
    assert (plan.world_size, plan.why) == (4, "automatic: one rank per visible CUDA device (4)")


def test_a_plans_temporary_folder_goes_on_close_and_with_the_plan_but_a_given_one_stays(tmp_path, monkeypatch):
    """Notebook 04 plans in a temporary folder (metrics, checkpoints): nothing of it may outlive the plan."""
    import gc

    monkeypatch.setenv("LABKIT_RUN_DIR", str(tmp_path))
    plan = cifar.plan(device="cpu")
    assert plan.workdir.parent == tmp_path and plan.workdir.is_dir()
    plan.close()
    assert not plan.workdir.exists()
    forgotten = cifar.plan(device="cpu").workdir
    gc.collect()  # the plan itself was never kept
    assert forgotten.parent == tmp_path and not forgotten.exists()
    given = tmp_path / "mine"
    kept = cifar.plan(device="cpu", checkpoint_dir=str(given))
    kept.close()
    assert given.is_dir()  # the learner's own folder is theirs


def test_notebook_plan_rejects_in_process_multi_rank_and_unknown_options():
    with pytest.raises(ConfigError, match="exactly one rank"):
        cifar.plan(world_size=2, launcher="inprocess", device="cpu")
    with pytest.raises(ConfigError) as exc:
        cifar.plan(device="cpu", learning_rate=0.1)
    assert exc.value.field == "learning_rate"


@pytest.mark.parametrize("name", ["synthetic", "resume", "compile_model"])
def test_a_notebook_switch_passed_as_text_is_refused_not_read_as_true(tmp_path, name):
    """Plain papermill passes `-p resume false` as the string "false" (true to Python): the run must not resume,
    compile or go synthetic because of it; one error names the notebook parameter and how to pass a boolean."""
    with pytest.raises(ConfigError) as exc:
        cifar.plan(**{**TINY, "checkpoint_dir": str(tmp_path), name: "false"})
    assert exc.value.field == name and "got 'false'" in exc.value.problem
    assert f"-p {name} False" in exc.value.fix


def test_resume_without_a_checkpoint_dir_names_the_notebooks_parameter_in_the_fix():
    with pytest.raises(ConfigError) as exc:
        cifar.plan(**TINY, resume=True)
    assert exc.value.field == "resume" and "checkpoint_dir=" in exc.value.fix


# --------------------------------------------------------------------------------------------- DeepSpeed config


def test_deepspeed_config_is_built_from_the_parameters():
    cfg = train.TrainConfig(
        synthetic=True, device="cpu", dtype="bf16", stage=2, micro_batch=16, grad_accum=2, optimizer="sgd"
    ).resolved(world_size=2)
    c = train.deepspeed_config(cfg, total_steps=100)
    assert (c["train_batch_size"], c["train_micro_batch_size_per_gpu"], c["gradient_accumulation_steps"]) == (64, 16, 2)
    assert c["zero_optimization"] == {"stage": 2} and c["zero_allow_untested_optimizer"] is True
    assert c["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"} and "bf16" not in c
    assert c["optimizer"]["type"] == "SGD" and c["optimizer"]["params"]["nesterov"] is True
    plain = dataclasses.replace(cfg, momentum=0.0)  # torch refuses Nesterov without momentum
    assert train.deepspeed_config(plain, 100)["optimizer"]["params"]["nesterov"] is False
    assert c["scheduler"]["params"]["total_num_steps"] == 100 and c["scheduler"]["params"]["warmup_num_steps"] == 10
    assert c["timers"] == {"throughput": {"enabled": False}}  # no device sync per step
    engine_mode = train.deepspeed_config(
        train.TrainConfig(synthetic=True, device="cpu", dtype="bf16", amp="engine").resolved(), 10
    )
    assert engine_mode["bf16"] == {"enabled": True} and "torch_autocast" not in engine_mode
    fp32 = train.deepspeed_config(train.TrainConfig(synthetic=True, device="cpu").resolved(), 10)
    assert not {"bf16", "fp16", "torch_autocast"} & set(fp32) and fp32["optimizer"]["params"]["torch_adam"] is True
    json.dumps(c)


# --------------------------------------------------------------------------------------------- models and data


def test_models_have_the_expected_size_and_accept_channels_last_batches():
    import torch

    lenet, resnet = build_model("lenet"), build_model("resnet")
    assert sum(p.numel() for p in lenet.parameters()) == 62_006  # DeepSpeedExamples' net
    assert 1.9e6 < sum(p.numel() for p in resnet.parameters()) < 2.1e6  # airbench94 widths
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    assert lenet(x).shape == (4, 10) and build_model("resnet", width=0.25)(x).shape == (4, 10)


@pytest.fixture(scope="module")
def tiny_arrays():
    return data.synthetic_arrays(train=64, test=16, seed=1)


def test_device_batches_are_crops_and_flips_of_the_padded_images(tiny_arrays):
    import torch
    import torch.nn.functional as F

    feed = data.DeviceData(tiny_arrays, torch.device("cpu"), torch.float32, channels_last=True)
    padded = F.pad(torch.from_numpy(tiny_arrays.train_images).float(), (4, 4, 4, 4), mode="reflect")
    flips_seen = 0
    for x, y in feed.epoch(0, micro_batch=16, steps=2, accum=1):
        assert x.shape == (16, 3, 32, 32) and x.is_contiguous(memory_format=torch.channels_last)
        pixels = ((x - feed.shift) / feed.scale).round()
        for img, label in zip(pixels, y):
            candidates = [i for i in range(64) if tiny_arrays.train_labels[i] == label]
            match = None
            for i in candidates:
                windows = padded[i].unfold(1, 32, 1).unfold(2, 32, 1)  # 3, 9, 9, 32, 32
                for flip in (False, True):
                    target = img.flip(-1) if flip else img
                    hit = (windows == target[:, None, None]).all(dim=(0, 3, 4)).nonzero()
                    if len(hit):
                        match = (i, flip)
                        break
                if match:
                    break
            assert match is not None, "a batch image is not a crop of any training image"
            flips_seen += match[1]
    assert 0 < flips_seen < 32  # some flipped, some not


def test_ranks_take_disjoint_shares_and_epochs_replay_identically(tiny_arrays):
    import torch

    def labels_and_sums(rank, world, epoch):
        feed = data.DeviceData(tiny_arrays, torch.device("cpu"), torch.float32, rank=rank, world_size=world)
        return [(x.sum().item(), y.tolist()) for x, y in feed.epoch(epoch, micro_batch=8, steps=4, accum=1)]

    r0, r1 = labels_and_sums(0, 2, epoch=5), labels_and_sums(1, 2, epoch=5)
    assert r0 == labels_and_sums(0, 2, epoch=5)  # same epoch, same batches: a resume replays exactly
    assert r0 != labels_and_sums(0, 2, epoch=6)
    assert all(a != b for a, b in zip(r0, r1))
    # resuming at step 2 yields exactly the batches 2 and 3 of the uninterrupted epoch
    feed = data.DeviceData(tiny_arrays, torch.device("cpu"), torch.float32, rank=0, world_size=2)
    assert [(x.sum().item(), y.tolist()) for x, y in feed.epoch(5, 8, 4, 1, start=2)] == r0[2:]


# ------------------------------------------------------------------------------------------------ checkpoints


def _fake_checkpoint(root: Path, step: int, complete: bool = True) -> Path:
    tag = root / f"step{step:08d}"
    tag.mkdir(parents=True)
    (tag / "mp_rank_00_model_states.pt").write_bytes(os.urandom(2048))
    if complete:
        checkpoint.write_manifest(tag, {"step": step, "world_size": 1}, checkpoint.run_key(root, create=True))
    return tag


def test_a_resumed_runs_step_exercise_counts_the_steps_this_run_takes(tmp_path):
    """Resumed at step 20 of 40, the run takes 20 steps: the exercise's answer and its solution say 20, not 40."""
    _fake_checkpoint(tmp_path, 20)
    one_rank = dict(TINY, world_size=1, launcher="inprocess", epochs=2, checkpoint_dir=str(tmp_path))
    resumed = cifar.plan(**one_rank, resume=True)
    assert (resumed.total_steps, resumed.start_step, resumed.steps_this_run) == (40, 20, 20)
    solution = cifar.steps_solution(resumed)
    assert solution.endswith("resumed from step 20: 40 - 20 = 20 steps this run.") and "= 40 in all" in solution
    fresh = cifar.plan(**{**one_rank, "checkpoint_dir": str(tmp_path / "new")})
    assert (fresh.start_step, fresh.steps_this_run) == (0, 40) and cifar.steps_solution(fresh).endswith("= 40.")


def test_latest_complete_checkpoint_skips_partial_and_corrupt_ones(tmp_path):
    _fake_checkpoint(tmp_path, 10)
    newer = _fake_checkpoint(tmp_path, 20)
    _fake_checkpoint(tmp_path, 30, complete=False)
    skipped = []
    assert checkpoint.latest_complete(tmp_path, log=skipped.append)[0] == 20
    assert "step00000030" in skipped[0] and "did not finish" in skipped[0]
    blob = newer / "mp_rank_00_model_states.pt"
    blob.write_bytes(blob.read_bytes()[:-1] + b"\0")  # one flipped byte, same size
    assert checkpoint.verify(newer, checkpoint.run_key(tmp_path)) == (
        False,
        "mp_rank_00_model_states.pt does not match its checksum (corrupt or truncated)",
    )
    assert checkpoint.latest_complete(tmp_path, log=skipped.append)[0] == 10
    # the run resumed from 10 and saved 10 again: 20 (corrupt, yet marked complete) and 30 (partial) are the
    # interrupted run's and go; counted, 20 would have outranked 10 and pruned the one checkpoint that loads
    checkpoint.prune(tmp_path, keep=1, saved=10)
    assert [p.name for _, p in checkpoint.tags(tmp_path)] == ["step00000010"]
    _fake_checkpoint(tmp_path, 11)
    _fake_checkpoint(tmp_path, 12, complete=False)
    checkpoint.prune(tmp_path, keep=1, saved=11)  # the newest `keep` complete ones up to the save stay
    assert [p.name for _, p in checkpoint.tags(tmp_path)] == ["step00000011"]


# -------------------------------------------------------------------------------------- real training (DeepSpeed)


def _epochs(records):
    return [r for r in records if r["kind"] == "epoch"]


@pytest.mark.slow
def test_in_process_training_learns_checkpoints_and_resumes_past_a_corrupt_checkpoint(tmp_path):
    ckpt, one_rank = tmp_path / "ckpt", {**TINY, "micro_batch": 64, "world_size": 1}  # 10 steps/epoch, as 2 ranks
    plan = cifar.plan(
        epochs=3,
        checkpoint_dir=str(ckpt),
        checkpoint_every=4,
        keep_checkpoints=3,
        write_config=str(tmp_path / "ds.json"),
        **one_rank,
    )
    first = cifar.execute(plan)
    summary, records = first["summary"], first["records"]
    assert summary["step"] == plan.total_steps == 30 and summary["synthetic"] and summary["data"] == "synthetic"
    steps = [r["loss"] for r in records if r["kind"] == "step"]
    assert len(steps) >= 10 and steps[-1] < 0.7 * steps[0], f"loss did not fall: {steps}"
    assert summary["final_test_acc"] > 0.2  # well above chance (0.1) after 30 steps
    assert json.loads((tmp_path / "ds.json").read_text()) == plan.deepspeed_config
    assert train.read_metrics(ckpt / "metrics.jsonl") == records
    tags = [s for s, _ in checkpoint.tags(ckpt)]
    assert tags == [30, 28, 24]  # every 4 steps plus the final one; 3 kept

    # the newest checkpoint gets corrupted and a newer, partial one appears: resume must use step 28 and redo 29-30
    blob = ckpt / "step00000030" / "mp_rank_00_model_states.pt"
    blob.write_bytes(blob.read_bytes()[: blob.stat().st_size // 2])
    (ckpt / "step00000031").mkdir()
    again = cifar.execute(
        cifar.plan(epochs=3, checkpoint_dir=str(ckpt), checkpoint_every=4, keep_checkpoints=3, resume=True, **one_rank)
    )
    assert again["summary"]["resumed_from"] == 28 and again["summary"]["step"] == 30
    log = train.read_metrics(ckpt / "metrics.jsonl")
    assert [e["epoch"] for e in _epochs(log)] == [1, 2, 3]  # the interrupted epoch is logged once
    assert [r["step"] for r in log if r["kind"] == "step"] == sorted({r["step"] for r in log if r["kind"] == "step"})
    assert [r["resumed_from"] for r in log if r["kind"] == "run"] == [None, 28]
    assert checkpoint.verify(ckpt / "step00000030", checkpoint.run_key(ckpt)) == (True, "ok")  # rewritten, complete


@pytest.mark.slow
def test_a_one_rank_run_in_this_process_stops_at_its_deadline(capsys):
    """`labkit train --timeout 2` with one rank (trained in the CLI's own process, no launcher to stop it) ran on past
    its deadline to the end. Now it stops there like a launched run: exit code 124 and a line naming the deadline, and
    the process is left without a process group (a notebook kernel can train again)."""
    import torch.distributed

    from labkit.cli import main

    sizes = ["--synthetic-train", "640", "--synthetic-test", "64", "--max-train", "640", "--micro-batch", "32"]
    flags = ["--synthetic", "--device", "cpu", "--world-size", "1", "--model", "lenet", "--epochs", "50"]
    assert main(["train", *flags, *sizes, "--no-progress", "--timeout", "2"]) == 124
    shown = capsys.readouterr()
    assert "via inprocess" in shown.out and "done [synthetic]" not in shown.out
    assert "labkit: deadline: stopped by its deadline after 2 s" in shown.err, shown.err
    assert not torch.distributed.is_initialized()


def _rank_pid(marker: str, local_rank: int) -> int | None:
    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if f"--local_rank={local_rank}" in cmd and any(marker in c for c in cmd) and "labkit.ranks.train" in cmd:
            return proc.pid
    return None


@pytest.mark.slow
def test_a_resume_that_finds_no_complete_checkpoint_logs_every_step_once(tmp_path):
    """Killed before its first checkpoint counted, a run resumed starts at step 0: its metrics file is rewritten, not
    appended to (two histories, the first one's `done` in the middle, would be plotted as one)."""
    ckpt = tmp_path / "ckpt"
    settings = dict(epochs=1, checkpoint_dir=str(ckpt), **{**TINY, "micro_batch": 64, "world_size": 1})
    cifar.execute(cifar.plan(**settings))
    for _, tag in checkpoint.tags(ckpt):
        (tag / checkpoint.COMPLETE_MARKER).unlink()  # as if every save had been cut short
    again = cifar.execute(cifar.plan(resume=True, **settings))
    assert again["summary"]["resumed_from"] is None
    log = train.read_metrics(ckpt / "metrics.jsonl")
    steps = [r["step"] for r in log if r["kind"] == "step"]
    assert steps == sorted(set(steps)) and [r["kind"] for r in log].count("done") == 1


@pytest.mark.slow
def test_killed_rank_ends_the_run_quickly_and_resume_completes_the_plan(tmp_path):
    from kit_testing import kit_processes

    ckpt = tmp_path / "ckpt"
    settings = dict(
        epochs=30,
        world_size=2,
        launcher="deepspeed",
        checkpoint_dir=str(ckpt),
        checkpoint_every=10,
        step_timeout=60,
        **TINY,
    )
    plan = cifar.plan(**settings)
    assert plan.total_steps == 300
    killed: dict[str, float] = {}

    def kill_rank_1_after_first_checkpoints(line: str) -> None:
        if "checkpoint step=20 saved" in line and not killed:
            pid = _rank_pid(str(ckpt), 1)
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            killed["at"] = time.monotonic()

    with pytest.raises(LaunchError) as exc:
        cifar.execute(plan, on_output=kill_rank_1_after_first_checkpoints, timeout=300)
    assert killed, "the run ended before the kill"
    assert time.monotonic() - killed["at"] < 60
    assert exc.value.failed_rank == 1 and str(exc.value).startswith("rank 1 died (killed by signal 9)"), str(exc.value)
    assert not [p for p in kit_processes() if str(ckpt) in p[1]], "ranks left running"
    survived = checkpoint.latest_complete(ckpt)[0]
    assert 20 <= survived < 300

    resumed = cifar.execute(cifar.plan(resume=True, **settings), timeout=300)
    summary = resumed["summary"]
    assert summary["resumed_from"] == survived and summary["step"] == 300 and summary["world_size"] == 2
    log = train.read_metrics(ckpt / "metrics.jsonl")
    assert [e["epoch"] for e in _epochs(log)] == list(range(1, 31))
    assert [e["step"] for e in _epochs(log)] == list(range(10, 301, 10))
    step_records = [r["step"] for r in log if r["kind"] == "step"]
    assert step_records == sorted(set(step_records)) and step_records[-1] == 300
    assert sum(e["steps"] for e in _epochs(log)) == 300  # every step trained exactly once across both runs
    assert [r["kind"] for r in log].count("done") == 1


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["openmpi", "mpirun"])
def test_mpi_launchers_train_two_ranks(tmp_path, launcher):
    import socket

    plan = cifar.plan(epochs=1, world_size=2, launcher=launcher, checkpoint_dir=str(tmp_path), **TINY)
    expected = launch.deepspeed_executable() if launcher == "openmpi" else ["mpirun"]  # the runner's form varies
    assert plan.command[: len(expected)] == expected
    # DeepSpeed's MPI discovery replaces MASTER_PORT with 29500 unless told otherwise: hold that port so a run
    # that ignores the launcher's free port fails here, not only when another job happens to hold it
    blocker = socket.socket()
    try:
        blocker.bind(("0.0.0.0", 29500))
        blocker.listen()
    except OSError:
        pass  # already held by something else: the same condition
    said: list[str] = []
    try:
        result = cifar.execute(plan, timeout=300, on_output=said.append)
    finally:
        blocker.close()
    assert result["summary"]["world_size"] == 2 and result["summary"]["step"] == plan.total_steps == 10
    # rank 0's bar and its epoch line share the pipe: a notebook showed '...loss=1.527]epoch 1/3 [synthetic]: ...'
    lines = "".join(said).splitlines()
    assert [line for line in lines if "epoch 1/1 [synthetic]: train loss" in line], lines
    assert not [line for line in lines if "step/s" in line and "epoch 1/1" in line], lines
    # the headline in two lines a notebook shows whole (one of 128 characters broke mid-word there)
    shown = [re.sub(r"\[\d+,\d+\]<stdout>:", "", line) for line in lines]  # mpirun's --tag-output, a bar's \r
    head = next((i for i, line in enumerate(shown) if line.startswith("training on synthetic data: ")), None)
    assert head is not None, lines
    assert shown[head + 1].startswith("  2 rank(s) on cpu, fp32, ZeRO-") and shown[head + 1].endswith(", 10 steps")
    assert all(len(line) <= 100 for line in shown[head : head + 2]), shown[head : head + 2]
    epoch = _epochs(result["records"])[0]
    assert epoch["images_per_s"] > 0 and 0 <= epoch["test_acc"] <= 1


def test_train_module_imports_nothing_from_notebooks_or_jobs():
    code = (
        "import sys, labkit.ranks.train, labkit.ranks.hello, labkit.ranks.zero_probe; bad = [m for m in sys.modules "
        "if m.startswith(('labkit.notebooks', 'labkit.chapters', 'labkit.jobs', 'torch', 'deepspeed', "
        "'kubernetes', 'papermill'))]; print(bad); assert not bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    cfg = train.TrainConfig(synthetic=True, device="cpu", micro_batch=64, epochs=3).resolved()
    np.testing.assert_equal(train.plan_steps(cfg, 640), (10, 30))  # the last incomplete batch is dropped
    assert train.plan_steps(dataclasses.replace(cfg, max_steps=7), 700) == (10, 7)


# ------------------------------------------------------------------------------------------------------ notebook


@pytest.mark.slow
def test_notebook_trains_synthetic_data_and_reports_what_it_measured(executed_notebook):
    from labkit import results

    path = executed_notebook("04_cifar10_training")
    recorded = results.read(path)
    summary, epochs = recorded["summary"], recorded["epochs"]
    assert summary["synthetic"] is True and summary["data"] == "synthetic"
    assert summary["device"] == devices.pick_device("auto")  # the device here: cpu on a laptop, cuda on a GPU machine
    assert summary["steps"] == summary["planned_steps"] > 0
    assert summary["last_loss"] < summary["first_loss"] and 0 < summary["loss_drop"] < 1
    assert [e["epoch"] for e in epochs] == [1, 2] and epochs[-1]["step"] == summary["steps"]
    assert summary["images_per_s"] == max(e["images_per_s"] for e in epochs[1:])
    assert recorded["deepspeed_config"]["timers"] == {"throughput": {"enabled": False}}
    assert all(r.get("data", "synthetic") == "synthetic" for r in recorded["records"])
    nb = json.loads(Path(path).read_text())
    texts = [o.get("data", {}).get("text/markdown", "") for c in nb["cells"] for o in c.get("outputs", [])]
    closing = "".join("".join(t) if isinstance(t, list) else t for t in texts)
    # the closing text is computed from this run's numbers
    assert f"{summary['images_per_s']:,.0f} images/s" in closing and "**synthetic**" in closing
    assert f"{100 * summary['final_test_acc']:.1f}%" in closing


@pytest.mark.slow
def test_a_rank_failing_under_mpirun_ends_the_job_at_once(tmp_path):
    """Rank 0 cannot open the rendezvous port (held here), rank 1 connects to the holder and would wait for ever:
    the failed rank must abort the MPI job instead of waiting in MPI_Finalize."""
    import socket

    from labkit import launch

    holder = socket.socket()
    holder.bind(("0.0.0.0", 0))
    holder.listen()
    # A private extensions folder: the abort may hit rank 1 while it holds the op's build lock, and an orphaned lock
    # in the shared ~/.cache would stall every other DeepSpeed CPU process on this machine (costs one op build).
    spec = launch.LaunchSpec(
        "labkit.ranks.train",
        world_size=2,
        launcher="mpirun",
        master_port=holder.getsockname()[1],
        env={"TORCH_EXTENSIONS_DIR": str(tmp_path / "ext")},
        args=[
            "--synthetic",
            "--synthetic-train",
            "256",
            "--synthetic-test",
            "64",
            "--width",
            "0.25",
            "--micro-batch",
            "32",
            "--device",
            "cpu",
            "--comm-timeout",
            "200",
        ],
    )
    failed_at: list[float] = []

    def watch(line: str) -> None:
        if "EADDRINUSE" in line and not failed_at:
            failed_at.append(time.monotonic())

    try:
        with pytest.raises(LaunchError) as exc:
            launch.run(spec, timeout=400, on_output=watch)
    finally:
        holder.close()
    assert failed_at and time.monotonic() - failed_at[0] < 30
    assert exc.value.failed_rank == 0 and "EADDRINUSE" in str(exc.value)


@pytest.mark.parametrize(
    "first,later,device,words",
    [
        (1104.0, 1006.0, "cpu", "about the same rate"),  # issue 13's CPU run: the old text claimed "slower"
        (11_701.0, 137_000.0, "cuda", "The first epoch ran 11.7x slower"),  # not "91% slower"
        (100_000.0, 125_000.0, "cuda", "The first epoch was 20% slower"),
        (120_000.0, 125_000.0, "cuda", "warm-up costs little"),
        (619.0, 437.0, "cpu", "42% above the best later one"),  # a CPU shared with another job
    ],
)
def test_the_first_epoch_sentence_follows_the_runs_numbers(first, later, device, words):
    shown = {"images_per_s_first_epoch": first, "images_per_s": later, "device": device, "epochs": 3}
    note = cifar.first_epoch_note(shown)
    assert words in note and f"{first:,.0f}" in note and f"{later:,.0f}" in note
    assert "no later epoch" in cifar.first_epoch_note({**shown, "epochs": 1})


@pytest.mark.slow
def test_compiled_training_goes_through_the_engines_compile_and_learns_the_same():
    """engine.compile() on a CPU (tiny LeNet: compilation dominates, so the option stays off by default there): the
    engine is really compiled, the first step's time is reported apart, and the losses match the eager run's."""
    small = dict(synthetic=True, synthetic_train=256, synthetic_test=64, model="lenet", epochs=2, micro_batch=64)
    runs = {
        flag: train.run_in_process(train.TrainConfig(**small, compile=flag, progress=False)) for flag in (False, True)
    }
    eager, compiled = runs[False], runs[True]
    assert compiled["compiled"] is True and eager["compiled"] is False
    assert compiled["first_step_s"] > eager["first_step_s"]  # compilation happens at the first forward
    losses = [[r["loss"] for r in run["records"] if r["kind"] == "step"] for run in (eager, compiled)]
    assert len(losses[0]) == len(losses[1]) > 2 and max(abs(a - b) for a, b in zip(*losses)) < 1e-3


def test_the_first_epoch_sentence_names_compilation_when_the_model_was_compiled():
    shown = {"images_per_s_first_epoch": 9_000.0, "images_per_s": 300_000.0, "device": "cuda", "epochs": 3}
    note = cifar.first_epoch_note({**shown, "compiled": True, "first_step_s": 31.2})
    assert "first step compiled the model (31.2 s)" in note and "compiled" not in cifar.first_epoch_note(shown)


@pytest.mark.slow
def test_short_loss_windows_at_epoch_edges_log_their_own_mean():
    """5 steps per epoch logged every 2 (global) steps: step 5 ends epoch 1 and step 6 opens epoch 2 with one step in
    each window; both must equal that step's loss (they were divided by 2 before: a false saw-tooth at epoch edges)."""
    small = dict(synthetic=True, synthetic_train=320, synthetic_test=64, model="lenet", epochs=2, micro_batch=64)
    runs = [train.run_in_process(train.TrainConfig(**small, log_every=k, progress=False)) for k in (1, 2)]
    every, pairs = ({r["step"]: r["loss"] for r in run["records"] if r["kind"] == "step"} for run in runs)
    assert sorted(pairs) == [2, 4, 5, 6, 8, 10]
    for edge in (5, 6):
        assert pairs[edge] == pytest.approx(every[edge], abs=1e-4)
    assert pairs[8] == pytest.approx((every[7] + every[8]) / 2, abs=1e-4)


def test_the_epoch_edge_sentence_follows_the_runs_losses():
    def steps(losses_by_epoch):
        return [{"kind": "step", "epoch": e + 1, "loss": x} for e, xs in enumerate(losses_by_epoch) for x in xs]

    sawtooth = cifar.epoch_edge_note(steps([[2.0, 1.0], [0.6, 0.55], [0.3, 0.3]]))
    assert (
        sawtooth.startswith("A saw-tooth")
        and "over 2 epoch edge(s) the loss went down by 43% on average, against a typical 8%" in sawtooth
    )
    assert cifar.epoch_edge_note(steps([[2.0, 1.0], [0.98, 0.9]])).startswith("No saw-tooth")
    assert "no epoch edge" in cifar.epoch_edge_note(steps([[2.0, 1.0]]))


def test_the_closing_paragraph_names_the_throughput_it_reports_for_what_it_is():
    """One epoch is no 'steady' rate; with three, the best later epoch (232) was called steady when the last ran 186."""

    def records(rates):
        epochs = [{"kind": "epoch", "epoch": i + 1, "step": i + 1, "images_per_s": r, "test_acc": 0.5, "train_acc": 0.5}
                  for i, r in enumerate(rates)]  # fmt: skip
        done = {"kind": "done", "step": len(rates), "total_steps": len(rates), "synthetic": True, "device": "cpu"}
        return [{"kind": "step", "step": 1, "loss": 2.0}, {"kind": "step", "step": 2, "loss": 1.0}, *epochs, done]

    one = cifar.closing_note(cifar.summarize(records([56.0])) | {"model": "resnet", "world_size": 1})
    assert "Steady" not in one and "**56 images/s** in its one epoch" in one
    three = cifar.closing_note(cifar.summarize(records([56.0, 232.0, 186.0])) | {"model": "resnet", "world_size": 1})
    assert "Steady" not in three and "Best later epoch: **232 images/s** (first epoch 56, last 186)" in three


def test_the_closing_paragraph_states_this_runs_numbers_without_rounding_them_to_a_claim():
    # the H200 run of 2026-12-05: loss 3.197 -> 0.012 and test accuracy 99.95% printed as "100% lower" / "100.0%"
    gpu = {"model": "resnet", "steps": 144, "planned_steps": 144, "synthetic": True, "world_size": 1, "device": "cuda"}
    gpu |= {"first_loss": 3.197, "last_loss": 0.01153, "loss_drop": 1 - 0.01153 / 3.197, "final_test_acc": 0.9995}
    gpu |= {"best_test_acc": 0.9995, "images_per_s": 186_396.0, "images_per_s_first_epoch": 11_731.0}
    gpu |= {"compiled": False, "first_step_s": 0.4, "seconds_per_50k_epoch": 50_000 / 186_396.0}
    gpu |= {"vs_seed_example_h200": 186_396 / 2745, "vs_airbench_h200": 186_396 / 320_000}
    note = cifar.closing_note(gpu)
    assert "(99.6% lower)" in note and "**99.95%** (best 99.95%" in note and "100" not in note.split("images/s")[0]
    assert "68x the DeepSpeedExamples recipe" in note and "58% of compiled airbench94" in note
    assert "0.27 s" in note and note.endswith("throughput on either.") and "compiled: its first step" not in note
    real_cpu = gpu | {"synthetic": False, "device": "cpu", "compiled": True, "first_step_s": 31.2}
    real_cpu |= {"seconds_per_50k_epoch": 41.4, "loss_drop": 0.42, "final_test_acc": 0.5, "best_test_acc": 0.5}
    note = cifar.closing_note(real_cpu)
    assert "the real CIFAR-10 images" in note and "(42% lower)" in note and "**50.0%**" in note
    assert "would take 41 s on this CPU" in note and "airbench94" not in note and "Synthetic" not in note
    assert "its first step took 31.2 s" in note


@pytest.mark.parametrize(
    "share,digits,text",
    [(0.4213, 0, "42%"), (0.9963, 0, "99.6%"), (0.9995, 1, "99.95%"), (1.0, 0, "100%"), (0.0004, 0, "0.04%"),
     (0.0, 0, "0%"), (-0.2, 0, "-20%"), (1.25, 0, "125%"),
     (1 - 1e-9, 0, ">99.9999%"), (1e-9, 0, "<0.0001%"), (-0.001, 0, "-0.1%"), (-1e-9, 0, ">-0.0001%")],
)  # fmt: skip
def test_a_percentage_short_of_whole_never_reads_100_nor_a_positive_one_0(share, digits, text):
    assert tabular.format_percent(share, digits) == text


@pytest.mark.parametrize(
    "value, text",
    [(999, "999 B"), (999_999, "1.00 MB"), (-999_999, "-1.00 MB"), (999_949_000, "999.95 MB"),
     (999_995_000, "1.00 GB"), (85_899_345_920, "85.90 GB")],
)  # fmt: skip
def test_byte_counts_move_to_the_next_unit_when_they_would_read_1000(value, text):
    assert tabular.format_bytes(value) == text  # 999,999 B read "1,000.00 kB"


@pytest.mark.slow
def test_an_in_process_run_uses_the_device_it_asks_for_whatever_an_earlier_run_named(monkeypatch):
    """A kernel or test session that ran on one device before: DS_ACCELERATOR still names it. On the GPU machine a CUDA
    run after a CPU one kept DeepSpeed's CPU accelerator, and NCCL could not broadcast the model left on the CPU."""
    from deepspeed.accelerator import get_accelerator

    monkeypatch.setenv("DS_ACCELERATOR", "cuda" if devices.pick_device("auto") == "cpu" else "cpu")
    small = dict(synthetic=True, synthetic_train=128, synthetic_test=64, model="lenet", epochs=1, micro_batch=64)
    run = train.run_in_process(train.TrainConfig(**small, device="auto", progress=False))
    assert run["device"] == devices.pick_device("auto") == get_accelerator().device_name()


@pytest.mark.slow
def test_sigterm_to_labkit_train_stops_every_rank_and_removes_its_temp_folders(tmp_path):
    """CI's `timeout` and `kill` send SIGTERM: it ended labkit at once, without one `finally`, so the ranks trained
    on until their next write hit a closed pipe and the run's temp folders stayed (Ctrl-C cleaned up)."""
    from kit_testing import kit_processes, wait_for_no_kit_processes, wait_until

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    cli = [sys.executable, "-c", "import sys; from labkit.cli import main; sys.exit(main())"]
    argv = ["train", "--world-size", "2", "--synthetic", "--synthetic-train", "2000", "--width", "0.25", "--epochs",
            "20", "--no-progress", "--timeout", "400", "--device", "cpu"]  # fmt: skip
    proc = subprocess.Popen([*cli, *argv], env={**os.environ, "TMPDIR": str(tmp)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        assert wait_until(lambda: len(kit_processes()) >= 3, 120), "the ranks did not start"
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM and "labkit: stopped by SIGTERM" in output, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert not wait_for_no_kit_processes(), kit_processes()
    assert sorted(p.name for p in tmp.iterdir()) == []  # labkit-launch-*, labkit-run-*, the metrics folder: gone


def test_notebook_04s_launch_line_is_the_one_that_runs_less_the_port_picked_at_launch(monkeypatch):
    plan = cifar.plan(device="cpu")
    ran, port = launched_line(monkeypatch, plan.launch_spec())
    assert launch.shown_command(plan.command) == without_port(ran, port) and "--master_port" not in plan.command_text()


def test_a_first_epoch_no_slower_than_a_later_one_is_not_called_warm_up():
    """A loaded 2-core machine ran epochs at 505, 357 and 787 images/s, and the note said 'The first epoch was 36%
    slower (...): the first steps pay one-off allocations and warm caches', though epoch 2 was slower still: the
    run's rates swung with the machine's load, and shows no warm-up cost."""
    records = [{"kind": "step", "step": 1, "loss": 2.9}, {"kind": "step", "step": 45, "loss": 0.67}]
    records += [{"kind": "epoch", "epoch": e, "step": 15 * e, "train_acc": 0.5, "test_acc": 0.5, "images_per_s": r}
                for e, r in ((1, 505.1), (2, 357.0), (3, 786.9))]  # fmt: skip
    note = cifar.first_epoch_note(cifar.summarize(records) | {"device": "cpu"})
    assert "epoch 1 ran at 505 images/s, the best later epoch at 787" in note and "epoch 2 ran at 357" in note
    assert "warm caches" not in note and not note.startswith("The first epoch was")
