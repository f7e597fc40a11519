"""labkit.zero: plans, bad input, and real DeepSpeed runs (2 CPU ranks) checked against labkit's DeepSpeed model."""

from __future__ import annotations

import itertools
import json
import tempfile
from pathlib import Path

import pytest
from kit_testing import launched_line, wait_for_no_kit_processes, without_port

from labkit import devices, launch, memory, zero
from labkit.chapters import zero_stages
from labkit.chapters.zero_stages import conclusions, format_table, summary_rows
from labkit.cli import main as cli_main
from labkit.errors import ConfigError, LaunchError


# ---------------------------------------------------------------------------------------------------------- plans
def test_parse_stages_and_offload_variants():
    assert [v.name for v in zero.parse_stages("0,1,2,3")] == ["0", "1", "2", "3"]
    assert [v.name for v in zero.parse_stages("0, 2+opt ,3+opt+param")] == ["0", "2+opt", "3+opt+param"]
    # --offload adds an offloaded variant of every listed stage that supports it (not stage 0)
    assert [v.name for v in zero.parse_stages("0,1,3", "optimizer")] == ["0", "1", "3", "1+opt", "3+opt"]
    assert [v.name for v in zero.parse_stages("2,3", "optimizer+param")] == ["2", "3", "2+opt", "3+opt+param"]
    assert zero.parse_stages("3+opt")[0].label == "ZeRO-3 + CPU optimizer"


@pytest.mark.parametrize(
    "stages,offload,field",
    [
        ("0,4", "none", "stages"),
        ("-1", "none", "stages"),
        ("2+foo", "none", "stages"),
        ("", "none", "stages"),
        ("1,1", "none", "stages"),
        ("2+param", "none", "offload"),
        ("0+opt", "none", "offload"),
        ("1,2", "optimizer+param", "offload"),
        ("1", "nvme", "offload"),
    ],
)
def test_parse_stages_rejects(stages, offload, field):
    with pytest.raises(ConfigError) as e:
        zero.parse_stages(stages, offload)
    assert e.value.field == field


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"world_size": 1.5}, "world_size"),
        ({"world_size": -2}, "world_size"),
        ({"dtype": "fp64"}, "dtype"),
        ({"device": "tpu"}, "device"),
        ({"params": "10"}, "params"),
        ({"params": "abc"}, "params"),
        ({"params": "40K", "hidden": 8, "layers": 1, "device": "cpu"}, "params"),  # too small to partition
        ({"params": "40K", "world_size": 64, "device": "cpu"}, "world_size"),  # more local ranks than the cap
        ({"steps": 1}, "steps"),
        ({"warmup": 4, "steps": 4}, "warmup"),
        ({"stages": "1,2", "offload": "optimizer+param"}, "offload"),
        ({"stages": "5"}, "stages"),
        ({"device": "cuda"}, "device"),  # CUDA is hidden by the test
        ({"device": "hpu"}, "device"),
    ],
)
def test_bad_input_fails_before_anything_is_launched(kwargs, field, monkeypatch):
    def no_launch(*a, **k):
        raise AssertionError("launched despite bad input")

    monkeypatch.setattr(launch, "run", no_launch)
    monkeypatch.setattr(devices, "cuda_status", lambda: (False, "no CUDA device (hidden by the test)"))
    args = {"params": "2M", "world_size": 2, "stages": "0,1,2,3"} | kwargs
    with pytest.raises(ConfigError) as e:
        zero.make_plan(args.pop("params"), args.pop("world_size"), args.pop("stages"), **args)
    assert e.value.field == field
    assert "Fix:" in str(e.value)


def test_fp16_on_a_cpu_without_fp16_support_is_refused(monkeypatch):
    import torch

    # DeepSpeed's CPU accelerator asks oneDNN; pretend this CPU lacks it (the answer depends on the machine)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_fp16_supported", lambda: False)
    with pytest.raises(ConfigError) as e:
        zero.make_plan("2M", 2, "0", dtype="fp16", device="cpu")
    assert e.value.field == "dtype" and "bf16" in e.value.fix
    assert zero.make_plan("2M", 2, "0", dtype="auto", device="cpu").dtype == "bf16"


def test_cli_reports_bad_input_with_exit_code_2(capsys, monkeypatch):
    monkeypatch.setattr(launch, "run", lambda *a, **k: pytest.fail("launched"))
    assert cli_main(["zero", "--stages", "0,4"]) == 2
    assert "stages: ZeRO stage must be 0, 1, 2 or 3" in capsys.readouterr().err
    assert cli_main(["zero", "--stages", "1,2", "--offload", "optimizer+param"]) == 2
    assert "parameter offload needs ZeRO stage 3" in capsys.readouterr().err
    assert cli_main(["zero", "--world-size", "-1"]) == 2
    assert "labkit: error: --world-size:" in capsys.readouterr().err  # named as typed
    for value in ("nan", "-5"):  # int(nan) failed as a traceback; -5 passed --dry-run and failed after the launch
        assert cli_main(["zero", "--timeout", value, "--dry-run"]) == 2
        assert "labkit: error: --timeout: must be a" in capsys.readouterr().err
    assert cli_main(["zero", "--stages", "0", "--offload", "optimizer", "--dry-run"]) == 2  # was silently ignored
    assert "optimizer offload needs ZeRO stage 1-3" in capsys.readouterr().err


def test_cli_report_files_are_checked_before_anything_runs(capsys, monkeypatch, tmp_path):
    """--json in a missing folder, or naming a folder: one error naming the flag, before the comparison runs (it was a
    FileNotFoundError traceback after it, the report lost)."""
    monkeypatch.setattr(launch, "run", lambda *a, **k: pytest.fail("launched"))
    said = {tmp_path / "no" / "x.json": f"{tmp_path / 'no'} is not a folder", tmp_path: f"{tmp_path} is a folder"}
    for where, problem in said.items():
        for argv in (["zero", "--stages", "0"], ["size", "--params", "7B"]):
            assert cli_main([*argv, "--json", str(where)]) == 2
            err = capsys.readouterr()
            assert f"labkit: error: --json: {problem}" in err.err and err.out == ""  # refused before the plan


def test_cli_exits_124_with_one_deadline_line_when_its_timeout_runs_out(capsys):
    """README: a deadline the user set ran out -> exit 124 and `labkit: deadline: ...` (was 2 and `labkit: error:`)."""
    argv = ["zero", "--stages", "0", "--params", "2M", "--world-size", "1", "--device", "cpu", "--timeout", "1"]
    assert cli_main(argv) == 124
    err = capsys.readouterr().err.splitlines()
    assert [line for line in err if line.startswith("labkit:")] == [err[-1]]
    assert err[-1].startswith("labkit: deadline: stopped by its deadline after 1 s (all ranks stopped)")
    assert not wait_for_no_kit_processes(), "ranks left running after the deadline"


def test_cli_dry_run_prints_the_deepspeed_command(capsys):
    assert (
        cli_main(
            [
                "zero",
                "--stages",
                "0,1,2,3",
                "--offload",
                "optimizer",
                "--world-size",
                "2",
                "--device",
                "cpu",
                "--params",
                "20M",
                "--dry-run",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "--num_gpus 2" in out and "--module" in out and "labkit.ranks.zero_probe" in out
    assert "command: deepspeed " in out  # the launcher by name, not this machine's path
    assert "ZeRO-3 + CPU optimizer" in out


def _fake_devices(monkeypatch, gpus: int) -> None:
    """This machine seen as one with `gpus` CUDA devices (0: none)."""
    monkeypatch.setattr(devices, "cuda_status", lambda: (gpus > 0, f"{gpus} GPU(s)" if gpus else "no CUDA device"))
    monkeypatch.setattr(devices, "hpu_status", lambda: (False, "no Gaudi"))
    real_count = devices.device_count
    monkeypatch.setattr(devices, "device_count", lambda d: gpus if d == "cuda" else real_count(d))


@pytest.mark.parametrize(
    "native, dtype, asked, expected",
    [
        (False, "auto", {}, (1, 4)),  # bf16 on a CPU without native bf16: a smaller batch, said so
        (True, "auto", {}, (2, 16)),
        (None, "auto", {}, (2, 16)),  # torch cannot say: the usual batch
        (False, "fp32", {}, (2, 16)),  # fp32 is fast there
        (False, "auto", {"micro_batch": 2, "seq": 8}, (2, 8)),  # what the user asked is kept
    ],
)
def test_cpu_ranks_without_native_bf16_train_on_fewer_tokens_and_say_why(monkeypatch, native, dtype, asked, expected):
    """Chapter 02 took 105 s on a 2-core CPU without AVX-512 and 46 s with 1 x 4 tokens per step instead of 2 x 16
    (docs/benchmarks.md): model states, the lesson, do not depend on the batch, and the plan says why it is smaller."""
    from labkit import checks

    _fake_devices(monkeypatch, 0)
    monkeypatch.setattr(checks, "native_cpu_bf16", lambda: native)
    plan = zero.make_plan("2M", 0, "0,3", dtype=dtype, **asked)
    assert (plan.micro_batch, plan.seq) == expected
    smaller = expected == (1, 4)
    assert plan.batch.startswith(f"{expected[0]} x {expected[1]} tokens per rank and step")
    assert ("no native bf16" in plan.batch) is smaller and ("not 2 x 16" in plan.batch) is smaller
    assert plan.to_dict()["seq"] == expected[1]  # what the ranks get
    _fake_devices(monkeypatch, 2)
    gpu = zero.make_plan("2M", 0, "0,3", device="cuda", dtype="fp32")
    assert (gpu.micro_batch, gpu.seq, gpu.batch_why) == (8, 512, "")


@pytest.mark.parametrize(
    "gpus,device,expected,why",
    [
        (4, "auto", (4, "cuda"), "one rank per visible CUDA device (4)"),
        (4, "cuda", (4, "cuda"), "one rank per visible CUDA device (4)"),
        (1, "auto", (2, "cpu"), "1 CUDA device(s) and ZeRO needs 2 or more ranks to partition model states"),
        (1, "cuda", (1, "cuda"), "one rank partitions nothing"),  # an explicit device is kept, and the note says so
        (0, "auto", (2, "cpu"), "no GPU here"),
        (4, "cpu", (2, "cpu"), "device='cpu'"),
    ],
)
def test_automatic_world_size_fits_the_machine_and_says_why(monkeypatch, gpus, device, expected, why):
    _fake_devices(monkeypatch, gpus)
    ranks, dev, text = zero.auto_ranks(0, device)
    assert (ranks, dev) == expected and why in text and text.startswith("automatic")
    assert "lesson" not in text and text.count("ranks to partition") <= 1, text  # said once, in ZeRO's own words
    plan = zero.make_plan("2M", 0, "0,1,2,3", device=device, dtype="fp32")
    assert (plan.world_size, plan.device, plan.why) == (ranks, dev, text)
    assert plan.partitions_nothing == (ranks == 1)


def test_more_ranks_than_gpus_is_refused_before_launch(monkeypatch):
    _fake_devices(monkeypatch, 1)
    monkeypatch.setattr(launch, "run", lambda *a, **k: pytest.fail("launched"))
    with pytest.raises(ConfigError) as e:
        zero.make_plan("2M", 2, "0,1", device="cuda")
    assert e.value.field == "world_size" and "only 1 CUDA" in e.value.problem
    assert zero.auto_ranks(2, "cpu")[:2] == (2, "cpu")  # CPU ranks may oversubscribe


GIB = 2**30


def test_a_model_whose_states_cannot_fit_the_hosts_memory_is_refused_before_launch(monkeypatch):
    """params='1.3B' (the parameter's own example) on a 23.5 GiB CPU machine: 2 ranks x 20.8 GB of ZeRO-0 states were
    launched and died after 86 s in DefaultCPUAllocator, advised to try 'a higher ZeRO stage or offload'."""
    from labkit import host

    monkeypatch.setattr(host, "memory_available", lambda *a, **k: int(23.5 * GIB))
    monkeypatch.setattr(launch, "run", lambda *a, **k: pytest.fail("launched"))
    with pytest.raises(ConfigError) as e:
        zero.make_plan("1.3B", 2, "0,1,2,3", offload="optimizer", device="cpu")
    assert e.value.field == "params" and "world_size = 2 ranks" in e.value.problem
    assert "25.23 GB available" in e.value.problem
    assert "ZeRO-0" in e.value.problem and "params at most about" in e.value.fix
    assert "offload" not in e.value.fix  # on CPU ranks offload moves states within the same memory: no way out
    fits = e.value.fix.split("params at most about ")[1].split()[0].strip(",;")
    zero.make_plan(fits, 2, "0,1,2,3", offload="optimizer", device="cpu")  # the advice holds
    # ZeRO-3 alone would fit: the fix says which configurations would
    with pytest.raises(ConfigError) as e:
        zero.make_plan("700M", 2, "0,3", device="cpu")
    assert "stages=" in e.value.fix and "ZeRO-3" not in e.value.problem
    zero.make_plan("700M", 2, e.value.fix.split("stages=")[1].split()[0].strip(",;"), device="cpu")
    zero.make_plan(device="cpu")  # the notebook's defaults fit
    zero.make_plan("3M", 2, "0,1,2,3", offload="optimizer", device="cpu")  # and its test parameters


def test_gpu_ranks_are_checked_against_each_device_and_may_be_told_to_offload(monkeypatch):
    from labkit import host

    _fake_devices(monkeypatch, 8)
    monkeypatch.setattr(host, "memory_available", lambda *a, **k: 1024 * GIB)
    monkeypatch.setattr(devices, "device_memory", lambda device: 80 * 10**9 if device == "cuda" else None)
    with pytest.raises(ConfigError) as e:
        zero.make_plan("7B", 8, "0,3", device="cuda", dtype="fp32")  # 112 GB of ZeRO-0 states on each 80 GB GPU
    assert e.value.field == "params" and "per CUDA device, more than its 80.00 GB" in e.value.problem
    assert "stages=" in e.value.fix and "world_size" not in e.value.fix  # fewer GPUs only hold more each
    assert zero.make_plan("7B", 8, "3", device="cuda", dtype="fp32").world_size == 8


def test_more_local_ranks_than_a_machine_runs_are_refused():
    """world_size 64 on CPU was accepted; notebook 03's local jobs stopped at 16 ranks."""
    with pytest.raises(ConfigError) as e:
        zero.make_plan("20M", 64, device="cpu")
    assert e.value.field == "world_size" and "more than 16" in e.value.problem


def test_one_rank_says_it_partitions_nothing():
    report = {"device": "cpu", "world_size": 1, "configs": []}
    for name, stage, total in (("0", 0, 1000), ("1", 1, 1000)):
        measured = {"device": {"params": total}, "host": {"params": 0}}
        report["configs"].append(
            {"label": f"ZeRO-{name}", "stage": stage, "measured": [measured], "measured_total": [total]}
            | {"step_time_s": 0.1, "rel_error_deepspeed": 0.0, "predicted_deepspeed_total": total}
            | {"rel_error_paper": 0.5, "losses": [1.0, 0.25 + stage * 2e-5]}
        )
    lines = conclusions(report)
    assert lines[0] == zero.ONE_RANK_NOTE and "0% less than ZeRO-0" in lines[1]
    assert "the paper's formulas were off by up to 50%." in lines[-2]
    assert lines[-1].startswith("Final losses across configurations differ by 2.00e-05: ZeRO changes where")
    report["world_size"] = 2
    assert zero.ONE_RANK_NOTE not in conclusions(report)


@pytest.mark.parametrize(
    "gpus,device,expected", [(1, "auto", (1, "cuda")), (0, "auto", None), (2, "auto", None), (1, "cpu", None)]
)
def test_one_gpu_adds_a_one_rank_reference_run_only_when_the_lesson_moved_to_cpu(monkeypatch, gpus, device, expected):
    _fake_devices(monkeypatch, gpus)
    plan = zero.make_plan("2M", 0, "0,3", device=device, dtype="fp32")
    reference = zero.one_device_reference(plan, device)
    if expected is None:
        assert reference is None
    else:
        assert (reference.world_size, reference.device) == expected and reference.partitions_nothing
        assert reference.variants == plan.variants and reference.params == plan.params
        assert reference.dtype == "fp32" and "one rank partitions nothing" in reference.why


def _config(label, stage, total, on_device, offload=False):
    measured = {"device": {"params": on_device}, "host": {"params": total - on_device}}
    return {
        "label": label,
        "stage": stage,
        "offload_optimizer": offload,
        "measured": [measured],
        "measured_total": [total],
        "step_time_s": 0.01,
    }


def test_the_one_device_note_is_computed_from_both_runs():
    cpu = {
        "device": "cpu",
        "world_size": 2,
        "configs": [
            _config("ZeRO-0", 0, 1000, 1000),
            _config("ZeRO-3", 3, 500, 500),
            _config("ZeRO-3 + CPU optimizer", 3, 500, 500, True),
        ],
    }
    gpu = {
        "device": "cuda",
        "world_size": 1,
        "configs": [
            _config("ZeRO-0", 0, 1000, 1000),
            _config("ZeRO-3", 3, 1100, 1100),
            _config("ZeRO-3 + CPU optimizer", 3, 1100, 300, True),
        ],
    }
    note = zero_stages.one_device_note(cpu, gpu)
    assert "1.00 kB to 1.10 kB" in note and "a spread of 10%" in note and "one rank partitions nothing" in note
    assert "On 2 CPU ranks, ZeRO-3 held 500 B per rank, 50% less than ZeRO-0" in note
    assert "ZeRO-3 + CPU optimizer kept 300 B on the CUDA device against 1.00 kB for ZeRO-0" in note
    rows = zero_stages.one_device_rows(cpu, gpu)
    assert [r["one_device_on_device"] for r in rows] == [1000, 1100, 300] and rows[1]["per_cpu_rank"] == 500
    # the H200 run of 2026-12-05: 335.95 MB to 336.48 MB printed as "a spread of 0%"
    gpu["configs"][1] = _config("ZeRO-3", 3, 1002, 1002)
    assert "a spread of 0.2%" in zero_stages.one_device_note(cpu, gpu)


def test_cli_size(capsys, tmp_path):
    out_json = tmp_path / "size.json"
    assert cli_main(["size", "--params", "70B", "--dtype", "fp16", "--json", str(out_json)]) == 0
    text = capsys.readouterr().out
    assert "140.00 GB" in text and "1.2" in text
    rows = json.loads(out_json.read_text())
    assert rows[0]["devices"]["H100"] == 3
    assert cli_main(["size", "--params", "7B", "--train-stage", "3", "--world-size", "2", "--device", "A100-40GB"]) == 0
    text = capsys.readouterr().out
    assert "does NOT fit" in text and "smallest N that fits: 4" in text
    assert cli_main(["size", "--params", "7B", "--dtype", "int3"]) == 2


def test_ds_config_for_cpu_offload_avoids_compiling_ops():
    plan = zero.make_plan("2M", 2, "0,2+opt", device="cpu", dtype="bf16")
    cfg = plan.ds_config(plan.variants[1])
    assert cfg["optimizer"]["params"]["torch_adam"] is True
    assert cfg["zero_force_ds_cpu_optimizer"] is False  # accepted by DeepSpeed 0.19.8 (the runs below use it)
    assert cfg["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert cfg["bf16"] == {"enabled": True}
    assert cfg["zero_optimization"]["reduce_bucket_size"] == plan.hidden**2


# ---------------------------------------------------------------------------------------------------------- real runs
def _check_report(report: dict, world_size: int) -> None:
    for c in report["configs"]:
        assert len(c["measured"]) == world_size
        for r in range(world_size):
            measured = c["measured_total"][r]
            predicted = c["predicted_deepspeed_total"]
            # The bar is 2%; the model is in fact exact up to a few scalar tensors (grad norms, < 1 KiB).
            assert abs(measured - predicted) / predicted <= 0.02, (c["label"], r, measured, predicted)
            assert abs(measured - predicted) < 1024, (c["label"], r, measured, predicted)
            for loc, kind in itertools.product(memory.LOCATIONS, memory.STATE_KINDS):
                m, p = c["measured"][r][loc][kind], c["predicted_deepspeed"][loc][kind]
                assert abs(m - p) < 1024, (c["label"], r, loc, kind, m, p)
                if kind in ("optimizer_states", "master_params"):  # no scalar extras: exact, `step` included
                    assert m == p, (c["label"], r, loc, kind, m, p)
            # the lazily created state is modelled too: right after initialize
            init = [p for p in c["timeline"][r] if p["phase"] == "init"][0]["tensors"]
            init_total = sum(init["device"].values()) + sum(init["host"].values())
            pred_init = sum(sum(v.values()) for v in c["predicted_deepspeed_after_init"].values())
            assert abs(init_total - pred_init) < 1024, (c["label"], r, init_total, pred_init)
        # the paper's number is reported beside it
        assert c["predicted_paper_total"] > 0 and "Ψ" in c["predicted_paper"]["formula"]
        assert c["step_time_s"] > 0 and all(x == x for x in c["losses"])  # not NaN


@pytest.mark.slow
def test_measured_bytes_match_the_deepspeed_model_bf16_all_stages_and_offload():
    # Odd width (99) exercises the padding: ZeRO-1/2 pad the flat group to 2N, ZeRO-3 pads each odd tensor.
    plan = zero.make_plan(
        "200K", 2, "0,1,2,3,1+opt,2+opt,3+opt", hidden=99, layers=3, steps=3, device="cpu", dtype="bf16"
    )
    assert plan.params % 4 != 0
    report = zero.run_plan(plan, progress=False)
    assert [c["optimizer_class"] for c in report["configs"]] == [
        "FP16_UnfusedOptimizer",
        "DeepSpeedZeroOptimizer",
        "DeepSpeedZeroOptimizer",
        "DeepSpeedZeroOptimizer_Stage3",
        "DeepSpeedZeroOptimizer",
        "DeepSpeedZeroOptimizer",
        "DeepSpeedZeroOptimizer_Stage3",
    ]
    _check_report(report, 2)
    by = {c["name"]: c for c in report["configs"]}
    # padding really happened, and the model accounted for it
    assert by["2"]["predicted_deepspeed"]["device"]["params"] > 2 * plan.params
    # stage 1 and 2 hold the same bytes in DeepSpeed 0.19, unlike the paper's formulas
    assert by["1"]["measured_total"] == by["2"]["measured_total"]
    assert by["1"]["predicted_paper_total"] > by["2"]["predicted_paper_total"]
    # ZeRO changes where states live, not the mathematics: same losses for the ZeRO stages
    assert by["1"]["losses"] == pytest.approx(by["2"]["losses"], rel=1e-3)
    rows = summary_rows(report)
    assert len(rows) == 7 and "Ψ" in format_table(rows)
    said = conclusions(report)  # 6 comparisons, the 2 surprises this real run shows, the agreement, the losses
    assert len(said) == 10 and said[6].startswith("ZeRO-1 held exactly what ZeRO-2 held") and "same RAM" in said[7]
    assert said[9].startswith("Final losses across configurations differ by ") and "not the mathematics" in said[9]


@pytest.mark.slow
def test_measured_bytes_match_the_deepspeed_model_fp32():
    plan = zero.make_plan("100K", 2, "0,2,3", hidden=64, layers=2, steps=2, warmup=0, device="cpu", dtype="fp32")
    report = zero.run_plan(plan, progress=False)
    _check_report(report, 2)
    s0, s2 = report["configs"][0], report["configs"][1]
    assert s0["optimizer_class"] == "AdamW"  # no wrapper at stage 0 in fp32: no master copy
    assert s0["measured"][0]["device"]["master_params"] == 0
    assert s2["measured"][0]["device"]["master_params"] > 0  # ZeRO clones an fp32 master even in fp32


@pytest.mark.slow
def test_measured_bytes_match_the_deepspeed_model_on_one_rank():
    """ZeRO-3 on one rank: 1,596,429 bytes measured against 1,794,948 modelled for a 100K model (persistent small
    parameters counted whole and as their partition, which at N = 1 is the same storage)."""
    plan = zero.make_plan("100K", 1, "0,3,3+opt+param", steps=2, warmup=0, device="cpu", dtype="bf16")
    _check_report(zero.run_plan(plan, progress=False), 1)


@pytest.mark.slow
def test_a_failing_rank_surfaces_its_error_and_leaves_nothing_behind(tmp_path, monkeypatch):
    # A temp root of its own: a comparison running beside this test (notebook 02 in another session on the machine)
    # makes labkit-zero-* folders in the shared /tmp too, which a glob there cannot tell from this run's own.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    made, mkdtemp = [], tempfile.mkdtemp
    monkeypatch.setattr(tempfile, "mkdtemp", lambda *a, **k: made.append(mkdtemp(*a, **k)) or made[-1])
    plan = zero.make_plan("100K", 2, "0", hidden=64, layers=2, steps=3, device="cpu", dtype="bf16", timeout_s=300)
    plan.fail_rank = 1
    with pytest.raises(LaunchError) as e:
        zero.run_plan(plan, progress=False)
    assert e.value.failed_rank == 1
    assert "injected failure on rank 1" in str(e.value)
    assert not wait_for_no_kit_processes(), "ranks left running after a failed comparison"
    assert any(Path(d).name.startswith("labkit-zero-") for d in made), made  # the run directory was made here
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith("labkit-")]  # torch's own caches may stay
    assert not left, f"the run directory or the launch's temp folders were not removed: {left}"


# ---------------------------------------------------------------------------------------------------------- notebooks
@pytest.mark.slow
def test_notebook_02_records_a_comparison_that_matches_the_model(executed_notebook):
    from labkit import results

    rec = results.read(executed_notebook("02_zero_stage_comparison"))
    rows = rec["zero_comparison"]["rows"]
    assert [r["config"] for r in rows] == [
        "ZeRO-0",
        "ZeRO-1",
        "ZeRO-2",
        "ZeRO-3",
        "ZeRO-1 + CPU optimizer",
        "ZeRO-2 + CPU optimizer",
        "ZeRO-3 + CPU optimizer",
    ]
    for r in rows:
        assert r["rel_error_deepspeed"] <= 0.02, r
        assert r["paper"] > 0 and r["step_ms"] > 0
    by = {r["config"]: r for r in rows}
    assert by["ZeRO-3"]["measured_total"] < by["ZeRO-2"]["measured_total"] < by["ZeRO-0"]["measured_total"]
    agreement = rec["zero_agreement"]
    assert max(a["rel_error_deepspeed"] for a in agreement.values()) <= 0.02


@pytest.mark.slow
def test_notebook_05_inspects_one_rank(executed_notebook):
    from labkit import results

    rec = results.read(executed_notebook("05_memory_inspection"))
    ins = rec["inspection"]
    assert ins["config"] == "3" and ins["rank"] == 0
    assert abs(ins["measured_total"] - ins["predicted_total"]) / ins["predicted_total"] <= 0.02
    for k in ins["kinds"]:
        assert abs(k["difference"]) < 1024, k
    timeline = rec["timeline"]
    assert timeline[0]["phase"] == "init" and timeline[0]["optimizer_states"] == 0  # Adam state is lazy
    assert timeline[-1]["optimizer_states"] > 0
    # ZeRO-3 gathers whole parameters for compute: from step 2 on (once it has traced the module order and
    # prefetches) the forward snapshot holds more parameter bytes than the partitions alone
    fwd = [t for t in timeline if t["phase"] == "forward" and t["step"] >= 2][0]
    assert fwd["params"] > timeline[0]["params"]
    fit = rec["fit"]  # 7B bf16, ZeRO-3, 8 x H100: 16 x 7e9 / 8 x 1.25 = 17.5 GB per device
    assert fit["fits"] and fit["model_state_bytes"] == 14 * 10**9 and fit["min_world_size"] == 2


def test_gaudi_code_path_with_the_bridge_faked(monkeypatch):
    """No Gaudi here: fake habana_frameworks at the import boundary and check the plan and launch environment."""
    import sys
    import types

    monkeypatch.setattr(devices, "cuda_status", lambda: (False, "no CUDA device (hidden by the test)"))
    hpu = types.ModuleType("habana_frameworks.torch.hpu")
    hpu.is_available = lambda: True
    hpu.device_count = lambda: 8
    pkg, torch_pkg = types.ModuleType("habana_frameworks"), types.ModuleType("habana_frameworks.torch")
    pkg.torch, torch_pkg.hpu = torch_pkg, hpu
    monkeypatch.setitem(sys.modules, "habana_frameworks", pkg)
    monkeypatch.setitem(sys.modules, "habana_frameworks.torch", torch_pkg)
    monkeypatch.setitem(sys.modules, "habana_frameworks.torch.hpu", hpu)
    assert devices.pick_device("auto") == "hpu"  # no CUDA here, the Gaudi bridge answers
    plan = zero.make_plan("20M", 8, "0,3", device="hpu")
    assert plan.device == "hpu" and plan.dtype == "bf16" and (plan.micro_batch, plan.seq) == (8, 512)
    spec = plan.launch_spec("plan.json", "out")
    assert spec.device == "hpu"
    # DeepSpeed picks its HPU accelerator (and with it the hccl backend) from this variable
    assert launch.kit_env(world_size=8, device="hpu")["DS_ACCELERATOR"] == "hpu"


def test_the_zero3_exercise_checks_a_prediction_against_the_papers_formula():
    from labkit.chapters.zero_stages import check_zero3_prediction

    params = 21_000_000  # 16 bytes per parameter / 4 ranks = 84.0 MB
    assert "set `my_zero3_mb`" in check_zero3_prediction(params, "bf16", None)
    assert "the answer: 84 MB: **right**" in check_zero3_prediction(params, "bf16", 84.0)
    assert "84" not in check_zero3_prediction(params, "bf16", None)  # no answer before a prediction
    assert "**right**" in check_zero3_prediction(params, "bf16", 86.0)  # within 5%
    wrong = check_zero3_prediction(params, "bf16", 336.0)  # 16 bytes per parameter, forgetting N
    assert "not yet" in wrong and "16Ψ/N" in wrong


def test_the_zero3_exercise_scores_small_models_on_the_unrounded_answer():
    """40K parameters (33,088 in the model): the right 0.132 MB, and the solution's own answer, were 'not yet' against
    an answer rounded to 0.1 MB."""
    from labkit.chapters.zero_stages import check_zero3_prediction

    right = check_zero3_prediction(33_088, "bf16", 16 * 33_088 / 4 / 1e6)  # the solution cell's answer
    assert "**right**" in right and "the answer: 0.132 MB" in right
    assert "**right**" in check_zero3_prediction(33_088, "bf16", 0.13)
    assert "**not yet**" in check_zero3_prediction(33_088, "bf16", 0.1)


def test_the_headroom_note_compares_the_allocator_peak_with_the_calculators_assumption():
    config = _config("ZeRO-3", 3, 336_480_000, 336_480_000)
    note = zero_stages.headroom_note({"configs": [{**config, "peak_above_start": [571_730_944]}]})
    assert "1.70x the 336.48 MB of model states: above the calculator's assumed 1.25x" in note
    # 1 x H100: torch.cuda.memory_summary() under the note printed this peak as 558331 KiB, nowhere as 571.73 MB
    assert "torch's summary counts in KiB (1,024 bytes) and MiB: 571.73 MB is 558,331 KiB" in note
    cpu = zero_stages.headroom_note({"configs": [{**config, "peak_above_start": [None]}]})
    assert "No allocator peak" in cpu


def test_the_surprises_are_explained_with_the_runs_numbers():
    """Issue 13: ZeRO-1 = ZeRO-2 in DeepSpeed 0.19, and CPU 'offload' that costs memory, said where they appear."""
    configs = [
        _config("ZeRO-1", 1, 188_974_088, 188_974_088),
        _config("ZeRO-2", 2, 188_974_088, 188_974_088),
        _config("ZeRO-1 + CPU optimizer", 1, 235_162_792, 235_162_792, True),
    ]
    configs[0] |= {"predicted_paper_total": 209_971_200, "predicted_paper": {"formula": "4Ψ + 12Ψ/N"}}
    report = {"device": "cpu", "world_size": 2, "configs": configs}
    first, second = zero_stages.surprises(report)
    assert "ZeRO-1 held exactly what ZeRO-2 held (188.97 MB), less than the paper's stage-1 figure (209.97 MB" in first
    assert "ZeRO-1 + CPU optimizer held 46.19 MB more than ZeRO-1" in second and "same RAM" in second
    configs[1]["measured_total"] = [170_000_000]
    assert zero_stages.surprises({**report, "device": "cuda"}) == []  # stages differ; a GPU moves offload off


def test_the_memory_chart_and_the_progress_bar_name_small_models_and_one_rank(monkeypatch, capsys):
    """'Per-rank model states, 0.0M params' for 33,088 parameters; 'ZeRO comparison (1 ranks, cpu)'."""
    from labkit.errors import LabkitError
    from labkit.plots import zero as zplots

    kinds = dict.fromkeys(memory.STATE_KINDS, 0)
    config = _config("ZeRO-0", 0, 529_408, 529_408)
    config["measured"] = [{"device": kinds | {"params": 529_408}, "host": kinds}]
    config |= {"predicted_deepspeed_total": 529_408, "predicted_paper_total": 529_408}
    report = {"configs": [config], "params": 33_088, "dtype": "bf16", "world_size": 1, "device": "cpu"}
    title = zplots.stage_memory_figure(report).axes[0].get_title()
    assert title.startswith(f"Per-rank model states, {memory.format_count(33_088)} params, bf16")
    assert "0.0M" not in title

    def stop(*_, **__):
        raise LabkitError("not launched in this test")

    monkeypatch.setattr(launch, "run", stop)
    with pytest.raises(LabkitError):
        zero.run_plan(zero.make_plan("100K", 1, "0,1", device="cpu"))
    err = capsys.readouterr().err
    assert "ZeRO comparison (1 rank, cpu)" in err and "1 ranks" not in err
    with pytest.raises(LabkitError):  # one configuration (notebook 05) is no comparison
        zero.run_plan(zero.make_plan("100K", 2, "3", device="cpu"))
    assert "ZeRO-3 run (2 ranks, cpu)" in capsys.readouterr().err


def test_notebook_02s_launch_line_is_the_one_that_runs_less_the_port_picked_at_launch(monkeypatch):
    plan = zero.make_plan("2M", 2, "0,1", device="cpu")
    ran, port = launched_line(monkeypatch, plan.launch_spec("plan.json", "RUN_DIR"))
    assert plan.command() == without_port(ran, port) and "--master_port" not in plan.command()


def test_each_legend_key_of_the_memory_chart_stays_clear_of_its_label():
    """Notebook 02's chart drew the paper formula's key (a 900-point bar marker) across its own label: '—ZeRO paper
    formula' with the red bar over the 'Z'. No key may be drawn over a label."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from labkit.plots import zero as zplots

    kinds = dict.fromkeys(memory.STATE_KINDS, 0)
    configs = []
    for label, stage in (("ZeRO-0", 0), ("ZeRO-3", 3)):
        config = _config(label, stage, 335_946_000, 335_946_000)
        held = kinds | {"params": 41_994_240, "optimizer_states": 293_951_760}
        config["measured"] = [{"device": held, "host": kinds}]
        configs.append(config | {"predicted_deepspeed_total": 335_946_000, "predicted_paper_total": 335_946_000})
    report = {"configs": configs, "params": 20_997_120, "dtype": "bf16", "world_size": 2, "device": "cpu"}
    fig = zplots.stage_memory_figure(report)

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    pixels = np.asarray(canvas.buffer_rgba())[:, :, :3].astype(int)
    for text in fig.axes[0].get_legend().get_texts():
        box = text.get_window_extent(canvas.get_renderer())
        under = pixels[len(pixels) - int(box.y1) : len(pixels) - int(box.y0), int(box.x0) : int(box.x1)]
        coloured = (under.max(axis=2) - under.min(axis=2)) > 60  # the labels are black on white; a key is colour
        assert not coloured.any(), f"a legend key is drawn over its label {text.get_text()!r}"


def test_a_bar_chart_keeps_each_bars_number_inside_its_frame():
    """The tallest bar's number sat on the frame's top edge: '730' in notebook 02's step-time chart, '157,064' in 04's
    throughput panel. Every number written above a bar stays inside the axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from labkit.plots import zero as zplots
    from labkit.plots.training import training_curves_figure

    configs = [_config(f"ZeRO-{s}", s, 1, 1) | {"step_time_s": t} for s, t in ((0, 0.694), (1, 0.64), (2, 0.730))]
    epochs = [{"kind": "epoch", "epoch": e, "step": e, "train_acc": 0.5, "test_acc": 0.5, "images_per_s": r}
              for e, r in ((1, 10_412.0), (2, 134_344.0), (3, 157_064.0))]  # fmt: skip
    for fig in (zplots.step_time_figure({"configs": configs}), training_curves_figure(epochs)):
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        for ax in fig.axes:
            frame = ax.get_window_extent(canvas.get_renderer())
            for text in ax.texts:  # bar_label's numbers: clear of the frame by 2 points at least, not touching it
                gap_points = (frame.y1 - text.get_window_extent(canvas.get_renderer()).y1) * 72 / fig.dpi
                assert gap_points >= 2, text.get_text()
