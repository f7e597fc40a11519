"""labkit.memory and labkit.sizing: parameter counting, the paper's formulas, DeepSpeed's allocation model,
estimators, sizing."""

from __future__ import annotations

import subprocess
import sys

import pytest

from labkit import memory as M
from labkit import sizing as S
from labkit.errors import ConfigError

PSI = 1_000_000


# ---------------------------------------------------------------------------------------------------------- parsing
@pytest.mark.parametrize(
    "text,expected",
    [
        ("20M", 20_000_000),
        ("7B", 7 * 10**9),
        ("1.5b", 1_500_000_000),
        ("350k", 350_000),
        ("7e9", 7 * 10**9),
        (1000, 1000),
        (" 2 G ", 2 * 10**9),
        ("1T", 10**12),
    ],
)
def test_parse_count(text, expected):
    assert M.parse_count(text) == expected


@pytest.mark.parametrize("bad", ["", "abc", "-5M", "0", "1.2.3", "7X", True])
def test_parse_count_rejects_with_field_name(bad):
    with pytest.raises(ConfigError) as e:
        M.parse_count(bad, "calc_params")
    assert e.value.field == "calc_params" and "Fix:" in str(e.value)


# ---------------------------------------------------------------------------------------------------------- counting
def test_count_parameters_shared_frozen_and_largest_layer():
    import torch.nn as nn

    emb = nn.Embedding(100, 16)
    head = nn.Linear(16, 100, bias=False)
    head.weight = emb.weight  # tied: counted once
    frozen = nn.Linear(16, 8)
    frozen.requires_grad_(False)
    model = nn.Sequential(emb, nn.Linear(16, 32), head, frozen)
    c = M.count_parameters(model)
    assert c.total == 1600 + (16 * 32 + 32) + (16 * 8 + 8)
    assert c.trainable == 1600 + 16 * 32 + 32
    assert c.tensor_numels == [1600, 512, 32]
    assert c.largest_layer == 1600 and c.largest_layer_name in ("0", "2")


def test_count_parameters_agrees_with_accelerate():
    from labkit.ranks.zero_probe import build_model

    model = build_model(64, 3)
    c = M.count_parameters(model)
    acc = M.accelerate_sizes(model)
    assert acc["total_bytes"] == 4 * c.total  # fp32
    assert acc["largest_layer_bytes"] == 4 * c.largest_layer


def test_mlp_helpers_match_the_probe_model():
    from labkit.ranks.zero_probe import build_model

    for hidden, layers in [(64, 1), (99, 3), (192, 2)]:
        model = build_model(hidden, layers)
        assert [p.numel() for p in model.parameters()] == M.mlp_tensor_numels(hidden, layers)
        assert M.mlp_params(hidden, layers) == sum(p.numel() for p in model.parameters())


def test_mlp_shape_for():
    assert M.mlp_shape_for(335_000_000) == (2048, 10)  # the 2 x H200 benchmark model (Ψ = 335,646,720)
    assert M.mlp_params(2048, 10) == 335_646_720
    hidden, layers = M.mlp_shape_for(20_000_000)
    assert hidden % 64 == 0 and abs(M.mlp_params(hidden, layers) - 20e6) / 20e6 < 0.1
    with pytest.raises(ConfigError) as e:
        M.mlp_shape_for(1000)
    assert e.value.field == "params"


# ---------------------------------------------------------------------------------------------------------- the paper
@pytest.mark.parametrize(
    "stage,expected", [(0, 16 * PSI), (1, 4 * PSI + 12 * PSI // 4), (2, 2 * PSI + 14 * PSI // 4), (3, 16 * PSI // 4)]
)
def test_paper_formulas_mixed_precision(stage, expected):
    p = M.paper_model_states(PSI, stage, 4, "bf16")
    assert p["total"] == expected
    assert p["device"]["master_params"] + p["device"]["optimizer_states"] == (12 * PSI if stage == 0 else 3 * PSI)


def test_paper_formulas_fp32_and_offload():
    assert M.paper_model_states(PSI, 0, 4, "fp32")["total"] == 16 * PSI  # 4 + 4 + 8
    assert M.paper_model_states(PSI, 0, 4, "fp32")["device"]["master_params"] == 0
    assert M.paper_model_states(PSI, 1, 4, "fp32")["total"] == 8 * PSI + 8 * PSI // 4
    off = M.paper_model_states(PSI, 2, 4, "bf16", offload_optimizer=True)
    assert sum(off["device"].values()) == 2 * PSI
    assert sum(off["host"].values()) == 14 * PSI // 4
    both = M.paper_model_states(PSI, 3, 4, "bf16", offload_optimizer=True, offload_param=True)
    assert sum(both["device"].values()) == 0 and sum(both["host"].values()) == 16 * PSI // 4


# ---------------------------------------------------------------------------------------------------------- DeepSpeed
def _bytes(mem, phase="backward", location=None, steady=True):
    at = mem.at(phase, steady=steady)
    locs = [location] if location else ["device", "host"]
    return {k: sum(at[loc][k] for loc in locs) for k in M.STATE_KINDS}


def test_zero12_flat_buffer_padded_to_2n():
    # Ψ = 8 over N = 3: DeepSpeed pads the flat group to a multiple of 2*3 = 6 -> 12 elements, 4 per rank.
    mem = M.deepspeed_model_states([3, 5], 2, 3, "bf16", optimizer_impl="fused")
    b = _bytes(mem)
    assert b["params"] == 12 * 2
    assert b["master_params"] == 4 * 4
    assert b["gradients"] == 4 * 2
    assert b["optimizer_states"] == 2 * 4 * 4


def test_zero3_partitions_each_tensor_and_keeps_small_ones_whole():
    mem = M.deepspeed_model_states([5, 7, 200_001], 3, 2, "bf16", optimizer_impl="fused", reduce_bucket_size=10)
    parts = 3 + 4 + 100_001  # ceil(n / N) per tensor
    b = _bytes(mem)
    assert b["params"] == parts * 2 + (5 + 7) * 2  # the two small tensors are persistent (< 1e5 elements)
    assert b["master_params"] == parts * 4
    assert b["gradients"] == parts * 2  # grad_partitions_flat_buffer
    assert b["buffers"] == 10 * 2  # the reduce bucket, allocated at initialize
    assert b["optimizer_states"] == parts * 8
    # a lower threshold keeps fewer whole; the model-wide cap stops counting once reached
    assert (
        _bytes(M.deepspeed_model_states([5, 7], 3, 2, "bf16", param_persistence_threshold=6, reduce_bucket_size=0))[
            "params"
        ]
        == (3 + 4) * 2 + 5 * 2
    )
    assert (
        _bytes(M.deepspeed_model_states([5, 7], 3, 2, "bf16", model_persistence_threshold=6, reduce_bucket_size=0))[
            "params"
        ]
        == (3 + 4) * 2 + 5 * 2
    )


def test_zero3_on_one_rank_counts_a_persistent_parameter_once():
    """At N = 1 a small parameter's ds_tensor partition is the whole parameter, the same storage: the model counted it
    twice (11% over the measured bytes of a 100K model); from N = 2 the whole copy is storage of its own."""
    one = _bytes(M.deepspeed_model_states([5, 7, 200_001], 3, 1, "bf16", optimizer_impl="fused"))
    assert one["params"] == (5 + 7 + 200_001) * 2
    two = _bytes(M.deepspeed_model_states([5, 7, 200_001], 3, 2, "bf16", optimizer_impl="fused"))
    assert two["params"] == (3 + 4 + 100_001) * 2 + (5 + 7) * 2
    # a partition offloaded to the host is copied to a GPU for the computation, not to a CPU rank's own memory
    gpu = M.deepspeed_model_states([5, 7], 3, 1, "bf16", offload_optimizer=True, offload_param=True)
    cpu = M.deepspeed_model_states([5, 7], 3, 1, "bf16", offload_optimizer=True, offload_param=True, ranks_on_cpu=True)
    assert _bytes(gpu)["params"] == 2 * (5 + 7) * 2 and _bytes(cpu)["params"] == (5 + 7) * 2


def test_deepspeed_matches_paper_where_the_paper_is_exact():
    # One tensor divisible by 2N, no buckets, fused Adam (no step tensors): stages 0, 2, 3 are the paper's numbers.
    for stage in (0, 2, 3):
        ds = M.deepspeed_model_states(
            PSI, stage, 4, "bf16", optimizer_impl="fused", reduce_bucket_size=0, param_persistence_threshold=0
        )
        assert ds.total() == M.paper_model_states(PSI, stage, 4, "bf16")["total"], stage
    # ...but DeepSpeed partitions gradients already at stage 1: stage 1 == stage 2, below the paper's 4Ψ + 12Ψ/N.
    s1 = M.deepspeed_model_states(PSI, 1, 4, "bf16", optimizer_impl="fused").total()
    s2 = M.deepspeed_model_states(PSI, 2, 4, "bf16", optimizer_impl="fused").total()
    assert s1 == s2 < M.paper_model_states(PSI, 1, 4, "bf16")["total"]


def test_fp32_keeps_a_master_copy_under_zero_but_not_at_stage_0():
    s0 = _bytes(M.deepspeed_model_states(PSI, 0, 2, "fp32", optimizer_impl="fused"))
    assert s0["master_params"] == 0 and s0["params"] == 4 * PSI and s0["optimizer_states"] == 8 * PSI
    s1 = _bytes(M.deepspeed_model_states(PSI, 1, 2, "fp32", optimizer_impl="fused"))
    assert s1["master_params"] == 4 * PSI // 2  # cloned although it is the same dtype


def test_lazy_creation_and_gradient_lifetime():
    ds = M.deepspeed_model_states(PSI, 2, 2, "bf16", optimizer_impl="fused")
    init = _bytes(ds, "init", steady=False)
    assert init["optimizer_states"] == 0 and init["gradients"] == 0  # Adam state appears at the first step
    assert _bytes(ds, "backward")["gradients"] == PSI  # 2 bytes x Ψ/2
    assert _bytes(ds, "step")["gradients"] == 0  # released by the step
    assert _bytes(ds, "step")["optimizer_states"] == 8 * PSI // 2
    # the stage-0 mixed-precision wrapper creates Adam state eagerly
    s0 = M.deepspeed_model_states(PSI, 0, 2, "bf16", optimizer_impl="fused")
    assert _bytes(s0, "init", steady=False)["optimizer_states"] == 8 * PSI


def test_optimizer_offload_moves_states_to_the_host():
    ds = M.deepspeed_model_states([PSI // 2, PSI // 2], 2, 2, "bf16", offload_optimizer=True)
    dev, host = _bytes(ds, location="device"), _bytes(ds, location="host")
    assert dev["params"] == 2 * PSI and dev["optimizer_states"] == 0 and dev["master_params"] == 0
    assert dev["buffers"] == (PSI // 2) * 2  # temp_grad_buffer_for_gpu_offload: largest tensor, 16-bit
    assert host["master_params"] == 4 * PSI // 2 and host["gradients"] == 4 * PSI // 2
    assert host["optimizer_states"] == 8 * PSI // 2 + 4  # + torch Adam's step tensor


def test_on_one_memory_counts_the_host_as_the_ranks_device():
    # CPU ranks: the probe counts torch Adam's `step` (a CPU tensor) and offloaded states as "device". The kind table of
    # notebook 05 showed +4 / -4 for the step tensor on every CPU run until the prediction was folded like this.
    at = M.deepspeed_model_states([PSI // 2, PSI // 2], 2, 2, "fp32", offload_optimizer=True).at("backward")
    one = M.on_one_memory(at)
    assert sum(one["host"].values()) == 0 and set(one["host"]) == set(at["host"])
    assert {k: one["device"][k] for k in M.STATE_KINDS} == {k: at["device"][k] + at["host"][k] for k in M.STATE_KINDS}
    paper = M.paper_model_states(PSI, 3, 4, "bf16", offload_optimizer=True)
    folded = M.on_one_memory(paper)
    assert (folded["total"], folded["formula"]) == (paper["total"], paper["formula"])
    assert sum(folded["device"].values()) == paper["total"]


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"stage": 4}, "stage"),
        ({"world_size": 0}, "world_size"),
        ({"dtype": "fp64"}, "dtype"),
        ({"stage": 2, "offload_param": True, "offload_optimizer": True}, "offload"),
        ({"stage": 0, "offload_optimizer": True}, "offload"),
        ({"stage": 3, "offload_param": True}, "offload"),
        ({"optimizer_impl": "sgd"}, "optimizer_impl"),
    ],
)
def test_deepspeed_model_rejects_bad_input(kwargs, field):
    args = {"stage": 2, "world_size": 2, "dtype": "bf16"} | kwargs
    stage, world, dtype = args.pop("stage"), args.pop("world_size"), args.pop("dtype")
    with pytest.raises(ConfigError) as e:
        M.deepspeed_model_states(PSI, stage, world, dtype, **args)
    assert e.value.field == field


# ---------------------------------------------------------------------------------------------------------- estimators
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_estimators_as_data_agree_with_their_print(stage):
    total, largest = 1_300_000_000, 50_000_000
    text, printed = S.capture_deepspeed_estimator(stage, total, largest, gpus_per_node=8, nodes=2)
    assert "per CPU" in text and printed
    data = [r for r in S.deepspeed_estimates(total, largest, gpus_per_node=8, nodes=2) if r["stage"] == stage]
    assert len(data) == len(printed)
    for row, line in zip(data, printed):
        assert line["per_cpu_gib"] == pytest.approx(row["per_cpu_bytes"] / 2**30, abs=0.006)
        assert line["per_gpu_gib"] == pytest.approx(row["per_gpu_bytes"] / 2**30, abs=0.006)
        assert (line["options"]["offload_optimizer"] != "none") == row["offload_optimizer"]
    if stage == 2:  # DeepSpeed's own rule: 2Ψ + 18Ψ/N without offload
        no_off = next(r for r in data if not r["offload_optimizer"])
        assert no_off["per_gpu_bytes"] == 2 * total + int(18 * total / 16)


def test_estimator_capture_rejects_stage_without_estimator():
    with pytest.raises(ConfigError) as e:
        S.capture_deepspeed_estimator(1, 10**9)
    assert e.value.field == "stage"


# ---------------------------------------------------------------------------------------------------------- sizing
def test_inference_sizing():
    assert S.inference_weight_bytes(7 * 10**9, "fp16") == 14 * 10**9
    assert S.inference_weight_bytes(70 * 10**9, "int4") == 35 * 10**9
    rows = {r["dtype"]: r for r in S.inference_table(70 * 10**9, headroom=1.2)}
    assert rows["fp16"]["with_headroom_bytes"] == 168 * 10**9
    assert rows["fp16"]["devices"]["H100"] == 3  # 168 GB / 80 GB
    assert rows["fp16"]["devices"]["MI300X"] == 1
    assert rows["int4"]["devices"]["T4"] == 3  # 42 GB / 16 GB
    assert set(rows) == set(S.INFERENCE_DTYPES)
    # no fp8 count for devices without FP8 arithmetic (issue 13), a count for those with it
    assert {d for d, n in rows["fp8"]["devices"].items() if n == S.NO_FP8} == {"T4", "A10G", "A100-40GB", "A100-80GB"}
    assert rows["fp8"]["devices"]["H100"] == 2 and rows["int8"]["devices"]["A100-80GB"] == 2
    assert rows["bf16"]["devices"]["T4"] == "n/a (no BF16)" and rows["fp16"]["devices"]["T4"] == 11


@pytest.mark.parametrize(
    "call,field",
    [
        (lambda: S.inference_weight_bytes(10**9, "int3"), "dtype"),
        (lambda: S.devices_needed(10**9, "V100"), "device_type"),
        (lambda: S.devices_needed(10**9, "H100", headroom=0.5), "headroom"),
        (lambda: S.training_fit(10**9, "bf16", 3, 1, "H100", headroom=-1), "headroom"),  # a negative need "fit"
        (lambda: S.min_world_size(10**9, "bf16", 3, "H100", headroom=float("nan")), "headroom"),
    ],
)
def test_sizing_rejects_bad_input(call, field):
    with pytest.raises(ConfigError) as e:
        call()
    assert e.value.field == field


def test_training_fit_shows_the_arithmetic():
    fit = S.training_fit(7 * 10**9, "bf16", 3, 2, "A100-40GB")
    assert not fit["fits"]
    assert fit["model_state_bytes"] == 56 * 10**9  # 16Ψ / 2
    assert fit["min_world_size"] == 4  # 16 x 7e9 x 1.25 / N <= 40e9  ->  N >= 3.5
    assert any("16Ψ/N" in line for line in fit["lines"])
    assert S.training_fit(7 * 10**9, "bf16", 3, 4, "A100-40GB")["fits"]
    assert S.min_world_size(7 * 10**9, "bf16", 0, "H100") is None  # stage 0 does not shrink with N
    # not a power of two (the search doubles, then bisects): 16 x 10e9 x 1.25 / N <= 80e9  ->  N >= 2.5
    assert S.training_fit(10 * 10**9, "bf16", 3, 1, "H100")["min_world_size"] == 3
    assert S.min_world_size(20 * 10**9, "bf16", 3, "H100") == 5  # N >= 5


def test_training_in_a_dtype_the_device_cannot_compute_in_does_not_fit():
    """The inference table says 'n/a (no BF16)' for a T4: the training calculator must not say bf16 fits there."""
    fit = S.training_fit(350 * 10**6, "bf16", 0, 1, "T4")
    assert not fit["fits"] and fit["min_world_size"] is None and S.min_world_size(350 * 10**6, "bf16", 0, "T4") is None
    assert "no BF16" in fit["no_fit_reason"] and "fp16" in fit["no_fit_reason"] and "NOT fit" in fit["lines"][-1]
    assert S.training_fit(350 * 10**6, "fp16", 0, 1, "T4")["fits"]  # the same model in a dtype the T4 has


@pytest.mark.parametrize(
    "stage,device,kept,not_kept",
    [
        (1, "T4", "keeps the parameters (working dtype) whole on every device (14.00 GB)", "gradients"),
        (2, "T4", "keeps the parameters (working dtype) whole on every device (14.00 GB)", "gradients"),
        (0, "H100", "keeps every model state whole on every device (112.00 GB)", "parameters"),
    ],
)
def test_the_no_fit_reason_names_what_the_stage_really_keeps_whole(stage, device, kept, not_kept):
    """17.53 GB / 1.25 = 14 GB: at ZeRO-1 only the fp16 parameters stay whole (the model partitions gradients)."""
    reason = S.training_fit(7 * 10**9, "fp16", stage, 8, device)["no_fit_reason"]
    assert f"ZeRO-{stage} {kept}" in reason and not_kept not in reason


def test_counts_are_rounded_before_their_unit_is_picked():
    shown = [M.format_count(n) for n in (999, 1234, 999_499_999, 999_900_000, 7 * 10**9)]
    assert shown == ["999", "1.23K", "999M", "1B", "7B"]  # 999.9M read "1e+03M"


def test_memory_modules_import_without_torch_or_deepspeed():
    code = (
        "import sys, labkit.memory, labkit.sizing, labkit.zero, labkit.cli.zero, labkit.cli.size, labkit.plots.zero, "
        "labkit.chapters.zero_stages, labkit.chapters.memory_inspection; "
        "bad = [m for m in ('torch', 'deepspeed', 'kubernetes') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_timeline_sentence_is_read_from_the_run():
    """Issue 13: 05 said gradients live between backward and step; a ZeRO run has its gradient buffer from initialize.
    The sentence is now computed from the snapshots (these are a real 2-rank ZeRO-3 CPU run's, rank 0)."""
    from labkit.chapters.memory_inspection import timeline_note

    row = lambda phase, step, params, grads, adam: {"phase": phase, "step": step, "params": params,  # noqa: E731
                                                   "gradients": grads, "optimizer_states": adam}  # fmt: skip
    rows = [row("init", 0, 2958720, 2958720, 0), row("backward", 1, 2960256, 2958720, 0),
            row("step", 1, 2977920, 2958728, 11834884), row("forward", 2, 8876160, 2958728, 11834884),
            row("step", 2, 2977920, 2958728, 11834884)]  # fmt: skip
    note = timeline_note(rows)
    assert "gradients 2.96 MB at initialize (the flat gradient buffer comes with deepspeed.initialize" in note
    assert "Adam moments 11.83 MB at step 1's optimizer step" in note
    assert "peaked at 8.88 MB in step 2's forward, 3.0x" in note
    without_gather = [dict(r, params=2958720) for r in rows]
    assert "peaked" not in timeline_note(without_gather)  # stages that keep whole parameters: no gather to mention


@pytest.mark.parametrize(
    "change,field",
    [
        ({"dtype": "int8"}, "calc_dtype"),  # 05 has a `dtype` of its own, which was valid
        ({"world_size": 0}, "calc_world_size"),  # 05's world_size=0 is valid (automatic)
        ({"stage": 4}, "calc_stage"),
        ({"device": "h100"}, "calc_device"),
        ({"params": "lots"}, "calc_params"),
    ],
)
def test_the_calculators_bad_values_are_named_as_notebook_05_names_them(change, field):
    from labkit.chapters.memory_inspection import calculator

    with pytest.raises(ConfigError) as exc:
        calculator(**({"params": "7B", "dtype": "bf16", "stage": 3, "world_size": 8, "device": "H100"} | change))
    assert exc.value.field == field


def test_the_min_devices_exercise_says_what_to_write_when_no_number_fits_and_accepts_it():
    from labkit.chapters.memory_inspection import check_min_devices_prediction as check
    from labkit.chapters.memory_inspection import min_devices_answer

    nothing = S.training_fit(7 * 10**9, "bf16", 0, 8, "H100")  # ZeRO-0 keeps 112 GB whole on every device
    assert nothing["min_world_size"] is None and min_devices_answer(nothing) == "none"
    assert '"none"' in check(nothing, "H100", None)  # the unanswered exercise says what to write
    right = check(nothing, "H100", "none")
    assert "**right**" in right and "the answer: none" in right and "0" not in right.split("**")[0]
    assert "**not yet**" in check(nothing, "H100", 8) and "**not yet**" in check(nothing, "H100", 0)
    fits = S.training_fit(7 * 10**9, "bf16", 3, 8, "H100")
    assert "**not yet**" in check(fits, "H100", "None") and "**right**" in check(fits, "H100", min_devices_answer(fits))


def test_the_min_devices_exercise_checks_against_the_calculator():
    from labkit import sizing
    from labkit.chapters.memory_inspection import check_min_devices_prediction

    calc = sizing.training_fit(10 * 10**9, "bf16", 3, 8, "H100")
    n = calc["min_world_size"]
    assert n == 3  # worked out by hand (16 x 10e9 x 1.25 / N <= 80e9), not taken from the calculator under test
    assert "set `my_min_devices`" in check_min_devices_prediction(calc, "H100", None)
    assert "**right**" in check_min_devices_prediction(calc, "H100", n)
    assert "**not yet**" in check_min_devices_prediction(calc, "H100", n + 1)
    stage0 = sizing.training_fit(70 * 10**9, "fp16", 0, 8, "T4")
    assert stage0["min_world_size"] is None and "**right**" in check_min_devices_prediction(stage0, "T4", "none")
    assert "ZeRO-0 keeps every model state whole on every device" in check_min_devices_prediction(stage0, "T4", "none")
    # stage 2 does shrink with N, down to the parameters every device keeps: the reason says which states stay
    stage2 = sizing.training_fit(70 * 10**9, "bf16", 2, 8, "H100")
    assert stage2["no_fit_reason"] == (
        "ZeRO-2 keeps the parameters (working dtype) whole on every device (140.00 GB): "
        "175.30 GB per device with head-room even on 4096, > 80.00 GB"
    )


def test_the_closing_bullets_are_computed_from_the_inspected_rank():
    """Notebook 05's closing cell: numbers from rank 1's snapshots (rank 0's differ), the H200 run's shape."""
    from labkit.chapters.memory_inspection import closing_lines
    from labkit.zero import ONE_RANK_NOTE

    def snap(phase, step, **kinds):
        return {"phase": phase, "step": step, "tensors": {"device": {k: kinds.get(k, 0) for k in M.STATE_KINDS},
                                                          "host": dict.fromkeys(M.STATE_KINDS, 0)}}  # fmt: skip

    def rank_timeline(scale):
        init = snap("init", 0, params=21 * scale, master_params=42 * scale, gradients=21 * scale)
        steady = snap("backward", 2, params=21 * scale, master_params=42 * scale, gradients=21 * scale,
                      optimizer_states=84 * scale)  # fmt: skip
        steady["tensors"]["holders"] = [{"holder": "optimizer.state", "kind": "optimizer_states", "bytes": 84 * scale}]
        return [init, snap("step", 1, params=21 * scale), steady]

    config = {"label": "ZeRO-3", "measured_total": [1, 168_000_000], "predicted_deepspeed_total": 168_000_000}
    config |= {"predicted_paper_total": 167_980_000, "predicted_paper": {"formula": "16Ψ/N"}}
    config |= {"timeline": [rank_timeline(1), rank_timeline(1_000_000)], "allocated_before": [None, None]}
    calc, setup = S.training_fit(7 * 10**9, "bf16", 3, 8, "H100"), "7B in bf16 with ZeRO-3 on 8 x H100"
    lines = closing_lines(config, 1, calc, setup)
    assert lines[0].startswith("On rank 1 of ZeRO-3, the engine held 168.00 MB") and "168.00 MB (exactly)" in lines[0]
    near = config | {"measured_total": [1, 168_000_009]}  # the H100 run: 9 bytes of scalars the model leaves out
    assert "predicted 168.00 MB (9 bytes fewer), the paper" in closing_lines(near, 1, calc, setup)[0]
    over = config | {"measured_total": [1, 167_000_000]}
    assert "predicted 168.00 MB (1.00 MB, 1% more)" in closing_lines(over, 1, calc, setup)[0]
    assert "the paper 167.98 MB (16Ψ/N)" in lines[0]
    assert lines[1] == "The largest holder was `optimizer.state` (Adam moments, 84.00 MB, 50% of the total)."
    assert "After initialize the rank held 84.00 MB; at the steady backward point 168.00 MB (2.0x)" in lines[2]
    assert lines[2].endswith("what appeared after initialize: Adam moments (+84.00 MB).")
    assert lines[3].startswith("Calculator: 7B in bf16 with ZeRO-3 on 8 x H100 fits (17.50 GB needed")
    assert closing_lines(config, 1, calc, setup, one_rank=True) == [ONE_RANK_NOTE, *lines]
    t4 = S.training_fit(350 * 10**6, "bf16", 0, 1, "T4")  # 7 GB would fit 16 GB: the verdict gives the real reason
    assert closing_lines(config, 1, t4, "350M")[3] == (
        "Calculator: 350M does not fit (a T4 has no BF16 arithmetic: train in fp32 or fp16 there)."
    )


def test_the_closing_bullets_report_the_one_gpu_run_when_there_was_one():
    """05 on one H100 inspected 2 CPU ranks, then ran the same ZeRO-3 on the GPU (336.48 MB of states, allocator peak
    571.73 MB); 'What this run showed' spoke only of the CPU ranks."""
    from labkit.chapters.memory_inspection import closing_lines

    def snap(phase, **kinds):
        return {"phase": phase, "step": 1, "tensors": {"device": {k: kinds.get(k, 0) for k in M.STATE_KINDS},
                                                       "host": dict.fromkeys(M.STATE_KINDS, 0)}}  # fmt: skip

    timeline = [snap("init", params=21), snap("backward", params=21, optimizer_states=84)]
    config = {"label": "ZeRO-3", "measured_total": [105], "predicted_deepspeed_total": 105, "timeline": [timeline]}
    config |= {"predicted_paper_total": 105, "predicted_paper": {"formula": "16Ψ/N"}, "allocated_before": [None]}
    calc = S.training_fit(7 * 10**9, "bf16", 3, 8, "H100")
    gpu = {"label": "ZeRO-3", "measured_total": [336_480_000], "peak_above_start": [571_730_944]}
    lines = closing_lines(config, 0, calc, "7B", reference={"device": "cuda", "configs": [gpu]})
    assert lines[-1] == (
        "The same ZeRO-3 on this machine's one CUDA device (1 rank) held 336.48 MB of model states; its allocator "
        "peaked at 571.73 MB, 1.70x them, above the calculator's assumed 1.25x head-room."
    )
    assert closing_lines(config, 0, calc, "7B") == lines[:-1]  # no reference run: nothing to add
