"""Notebook 06: plan a model (inference sizing, training fit per ZeRO stage, the guide's stage advice checked), answer
`accelerate config` as parameters, run it, and answer the guide's three FAQs with the run's own numbers."""

from __future__ import annotations

from pathlib import Path

from labkit import memory, sizing
from labkit.accelerate_route import DTYPE_OF, QUESTIONS, AccelerateConfig, TrainPlan
from labkit.chapters import exercises
from labkit.devices import auto_ranks, check_ranks_fit, pick_device
from labkit.errors import check_choice, check_int, named_as
from labkit.tabular import format_bytes, format_plural
from labkit.zero import Variant

# The guide's order, fastest first (speed falls, memory saved grows): take the first that fits.
SPEED_ORDER = ((0, False, False), (1, False, False), (2, False, False), (2, True, False), (3, False, False),
               (3, True, False), (3, True, True))  # fmt: skip
DYNAMO_BACKENDS = ("no",)  # compiling is left out of the workshop (minutes of start-up on short runs)


def plan_run(
    *,
    num_machines: int,
    num_processes: int,
    zero_stage: int,
    mixed_precision: str,
    offload_optimizer: str,
    offload_param: str,
    dynamo_backend: str,
    device: str,
    steps: int,
    run_dir: str | Path,
) -> TrainPlan:
    """Every `accelerate config` answer checked (ConfigError naming the parameter), processes 0 = automatic."""
    check_choice("dynamo_backend", dynamo_backend, DYNAMO_BACKENDS, "leave it 'no': compiling adds minutes here")
    check_int("num_machines", num_machines, 1, "this chapter launches on this machine: 1", maximum=1)
    check_int("num_processes", num_processes, 0, "use 0 (automatic) or 1 or more processes")
    # the FAQ's step time is the mean after the first step (warm-up): one step leaves nothing to time
    check_int("steps", steps, 2, "pass 2 or more steps: the step time is measured after the first (warm-up) step")
    dev = pick_device(device)
    if num_processes == 0:
        num_processes, dev, _ = auto_ranks(device)
    check_ranks_fit("num_processes", num_processes, dev)
    config = AccelerateConfig(stage=zero_stage, num_processes=num_processes, mixed_precision=mixed_precision,
                              offload_optimizer=offload_optimizer, offload_param=offload_param)  # fmt: skip
    with named_as({"stage": "zero_stage"}):
        config.validated()
    return TrainPlan(config, run_dir, device=dev, steps=steps).validated()


def question_rows(config: AccelerateConfig, dynamo_backend: str) -> list[dict]:
    """accelerate config's questions, this notebook's answers and the guide's advice."""
    answers = {"compute_environment": "LOCAL_MACHINE", "distributed_type": "DEEPSPEED", "use_deepspeed": "yes",
               "num_machines": config.num_machines, "dynamo": dynamo_backend, "deepspeed_config_file": "no",
               "zero_stage": config.stage, "offload_optimizer_device": config.offload_optimizer,
               "offload_param_device": config.offload_param, "gradient_accumulation_steps":
               config.gradient_accumulation_steps, "gradient_clipping": config.gradient_clipping,
               "zero3_init_flag": config.zero3_init, "num_processes": config.num_processes,
               "mixed_precision": config.mixed_precision}  # fmt: skip
    return [{"question": q, "answer": answers[key], "advice": advice} for key, q, advice in QUESTIONS]


def fit_rows(params: int, dtype: str, device_type: str, world_sizes=(1, 2, 4, 8)) -> list[dict]:
    """Per ZeRO variant: per-device need (model states x head-room) on N devices, and whether it fits."""
    sizing.check_device_type(device_type)
    check_choice("plan_dtype", dtype, memory.TRAIN_DTYPES)
    rows = []
    for stage, opt, par in SPEED_ORDER:
        row = {"config": Variant(stage, opt, par).label}
        for n in world_sizes:
            fit = sizing.training_fit(params, dtype, stage, n, device_type, offload_optimizer=opt, offload_param=par)
            cell = f"{format_bytes(fit['need_bytes'], 'GB')} {'fits' if fit['fits'] else 'no'}"
            row[f"N={n}"] = sizing.lacks(dtype, device_type) or cell
        rows.append(row)
    return rows


def stage_advice(params: int, dtype: str, device_type: str, devices: int) -> dict:
    """The guide's rule (stage 2 when the parameters fit on one device, else 3) against the numbers: the fastest
    variant in the guide's order that fits on `devices` devices."""
    check_int("plan_devices", devices, 1, "pass the number of devices you would train on")
    capacity = sizing.DEVICE_MEMORY_GB[sizing.check_device_type(device_type)] * sizing.GB
    weights = params * memory.TRAIN_DTYPES[check_choice("plan_dtype", dtype, memory.TRAIN_DTYPES)]
    rule_stage = 2 if weights * sizing.TRAINING_HEADROOM <= capacity else 3
    best = next((Variant(*v).label for v in SPEED_ORDER if sizing.training_fit(params, dtype, v[0], devices,
                 device_type, offload_optimizer=v[1], offload_param=v[2])["fits"]), None)  # fmt: skip
    rule = sizing.training_fit(params, dtype, rule_stage, devices, device_type)
    held = weights * sizing.TRAINING_HEADROOM  # what the rule compares: the weights with the kit's head-room
    text = (f"The guide says ZeRO-{rule_stage} ({format_bytes(weights, 'GB')} of {dtype} weights, "
            f"{format_bytes(held, 'GB')} with x{sizing.TRAINING_HEADROOM:g} head-room, "
            f"{'fit' if rule_stage == 2 else 'do not fit'} on one {device_type}). The numbers on {devices} x "
            f"{device_type}: ZeRO-{rule_stage} needs {format_bytes(rule['need_bytes'], 'GB')} per device "
            f"({'fits' if rule['fits'] else 'does not fit'}); the fastest variant that fits is "
            f"{best or 'none (more devices or offload to NVMe)'}.")  # fmt: skip
    if sizing.lacks(dtype, device_type):  # the bytes are beside the point: nothing computes in that dtype there
        text = (f"No variant trains in {dtype} on a {device_type}: {rule['no_fit_reason']} (the guide's rule, "
                f"ZeRO-{rule_stage}, compares only bytes).")  # fmt: skip
    return {"rule_stage": rule_stage, "best": best, "rule_fits": rule["fits"],
            "holds": rule["fits"], "text": text}  # fmt: skip


def rank_memory_rows(report: dict) -> list[dict]:
    """FAQ 3: what DeepSpeed placed on each rank after the first step, counted tensor by tensor in the engine."""
    rows = []
    for r in report["ranks"]:
        counted = r["memory"]["step"]["device"]
        states = sum(v for k, v in counted.items() if k != "buffers")
        row = {"rank": r["rank"], "model states": states, "buffers": counted["buffers"]}
        row |= {k: counted[k] for k in memory.STATE_KINDS if k != "buffers"}
        row["allocator peak"] = (r["memory"].get("accelerator") or {}).get("peak_allocated")
        rows.append(row)
    return rows


def expected_moments(rank: dict) -> int:
    """Adam's two fp32 moments on one rank: 8 bytes x parameters, over the ranks from ZeRO stage 1 on (stage 0 keeps
    them whole on every rank)."""
    return 8 * rank["params"] // (rank["world_size"] if rank["check"]["zero_stage"] >= 1 else 1)


def check_moments_prediction(report: dict, prediction: int | None) -> str:
    """The exercise: Adam's two fp32 moments on rank 0 (expected_moments), as rank 0 counted them."""
    measured, why = _moments(report)
    why += " (within 5% counts)."
    return exercises.verdict(prediction, measured, name="my_moments_bytes", unit=" bytes", rel_tol=0.05, then=why)


def moments_solution(report: dict) -> str:
    """The solution cell of the exercise: what rank 0 counted and the 8 bytes x parameters / N behind it."""
    measured, why = _moments(report)
    return exercises.solution(measured, unit=" bytes", then=why + ".")


def _moments(report: dict) -> tuple[int, str]:
    """Adam's moments as rank 0 counted them at the step, and the formula's line."""
    r = report["ranks"][0]
    shared = f" / {r['world_size']} rank(s)" if r["check"]["zero_stage"] >= 1 else " (ZeRO-0: whole on every rank)"
    why = f"rank 0 counted them; 8 bytes x {r['params']:,} parameters{shared} = {expected_moments(r):,}"
    return r["memory"]["step"]["device"]["optimizer_states"], why


def faq_answers(report: dict, plan: TrainPlan, advice: dict, model_params: str) -> list[str]:
    """The guide's three FAQs, answered from this run."""
    r0, cfg = report["ranks"][0], plan.config
    n = r0["world_size"]
    step = sum(r0["step_times_s"][1:]) / max(1, len(r0["step_times_s"]) - 1)
    mem = rank_memory_rows(report)[0]
    return [
        f"**accelerate vs transformers?** transformers supplied the model ({r0['params']:,}-parameter "
        f"LlamaForCausalLM from a config) and nothing else; accelerate launched {n} process(es), read the YAML and "
        f"wrapped it in a {r0['check']['engine']} at ZeRO stage {r0['check']['zero_stage']} "
        f"({r0['optimizer_class']}). The HF Trainer calls this same accelerate path underneath.",
        f"**Do I need multiple GPUs?** Not for this model: one rank would hold it. For {model_params}: "
        + advice["text"],
        f"**How much memory did DeepSpeed place on each rank?** Rank 0 held {format_bytes(mem['model states'])} of "
        f"model states ({states_split(DTYPE_OF[cfg.mixed_precision], r0['check']['zero_stage'], n)}) and "
        f"{format_bytes(mem['buffers'])} of DeepSpeed buffers; {buffer_note(mem)} "
        f"A step took {step * 1e3:.0f} ms on {report['device']}.",
    ]


def states_split(dtype: str, stage: int, ranks: int) -> str:
    """Which model states a ZeRO stage splits over the ranks (the rest every rank holds whole)."""
    split = {1: "fp32 master weights and Adam moments", 2: "gradients, fp32 master weights and Adam moments"}
    if stage == 0 or ranks == 1:  # one rank: nothing to split over
        why = "ZeRO-0" if stage == 0 else f"ZeRO-{stage} has one rank to split over"
        return f"{dtype} parameters, gradients, fp32 master weights and Adam moments, whole on every rank: {why}"
    if stage == 3:
        return f"{dtype} parameters, gradients, fp32 master weights and Adam moments, all split over {ranks} rank(s)"
    return f"{dtype} parameters whole on every rank; {split[stage]} split over {ranks} rank(s)"


def buffer_note(mem: dict) -> str:
    """What the buffers mean beside the model states, from the counted bytes and, on a GPU, the allocator peak."""
    if mem["buffers"] > mem["model states"]:
        return ("the buffers outweigh the model: accelerate leaves DeepSpeed's default bucket sizes (5e8 elements), "
                "sized for billion-parameter models.")  # fmt: skip
    if mem["buffers"]:
        return "the model states are the bulk of it."
    # stage_1_and_2 allocates its buckets in backward and releases them after the reduction: the count after the
    # step cannot see them, a GPU's allocator peak does (1 x H100: 1.08 GB beside 4.83 MB of states)
    note = "none was alive when the step was counted (ZeRO frees its gradient-reduction buckets after each backward)"
    peak, states = mem["allocator peak"], mem["model states"]
    if peak and states:
        times = f"{peak / states:.1f}" if peak < 10 * states else f"{peak / states:,.0f}"
        # the peak counts whatever was alive at once (states, activations, buckets): it bounds the buckets, no more
        note += f"; the allocator peaked at {format_bytes(peak)}, {times}x the model states (everything alive at once:"
        note += " states, activations and those buckets)"
    return note + "."


def tokens_right(rank: dict) -> int:
    """How many generated tokens continue the count the model was trained on."""
    return sum(g == e for g, e in zip(rank["generated"], rank["expected"]))


def closing_lines(report: dict, advice: dict, plan_setup: str) -> list[str]:
    """The chapter's closing bullets from this run: the launch, the training and generation, rank 0's bytes, and the
    stage advice for `plan_setup` (e.g. '7B in bf16 on 8 x H100')."""
    r0, mem = report["ranks"][0], rank_memory_rows(report)[0]
    right = tokens_right(r0)
    verdict = "fits" if advice["holds"] else "does not fit"
    return [
        f"`accelerate launch` started {r0['world_size']} rank(s) on {report['device']}; each verified a "
        f"{r0['check']['engine']} at ZeRO stage {r0['check']['zero_stage']} before training.",
        f"The loss fell from {r0['losses'][0]:.2f} to {r0['losses'][-1]:.3f} in "
        f"{format_plural(len(r0['losses']), 'step')}, and the trained model continued the count for {right} of "
        f"{len(r0['expected'])} tokens.",
        f"Rank 0 held {format_bytes(mem['model states'])} of model states and {format_bytes(mem['buffers'])} of "
        f"DeepSpeed buffers: {buffer_note(mem)}",
        f"For {plan_setup}, the guide's ZeRO-{advice['rule_stage']} {verdict}; the fastest variant that fits is "
        f"{advice['best'] or 'none'}.",
    ]
