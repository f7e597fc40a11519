# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,jupyter,-all
#     notebook_metadata_filter: kernelspec,labkit,-jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
#   labkit:
#     cell_id_prefix: mem
#     test_parameters:
#       params: 3M
#       stage: 3
#       steps: 2
# ---

# %% [markdown]
# # 05 · Where did the memory go? One ZeRO run, rank by rank
#
# **Objectives.** In this chapter you follow one ZeRO run's bytes rank by rank (which attribute holds them, when they appear) and size a model for training and inference.
#
# **Prerequisites.** Chapter 02.
#
# **Time** at the defaults: 17-36 s on an idle 2-core CPU machine and 50-58 s on one H100 (CPU: four runs, two of them on CPUs without AVX-512, 2026-12-06 and 12-07; H100: two runs, 2026-12-06; docs/benchmarks.md).
#
# **Contents:** Check the inputs · Run it · Where the bytes went · The timeline: init → forward → backward → step · Do I need multiple GPUs? · What this run showed.
#
# Notebook 02 compared stages; this one opens up a single run. On the chosen rank it lists every tensor family the
# DeepSpeed engine holds (which attribute holds it, what kind of model state it is, device or host), follows the bytes
# through init → forward → backward → step, and shows the CUDA allocator's own summary on a GPU. It ends with a
# calculator for the question every workshop gets: *do I need more GPUs for this model?*

# %% tags=["parameters"]
params: str = "20M"  # model size of the inspected run (e.g. 4M, 20M, 335M)
world_size: int = 0  # data-parallel ranks the run partitions over; 0 for automatic: all GPUs if 2+, else 2 CPU ranks
stage: int = 3  # ZeRO stage of the inspected run (0-3)
offload: str = "none"  # offload of the inspected run: none | optimizer | optimizer+param (parameters need stage 3)
dtype: str = "auto"  # training precision: auto (bf16) | bf16 | fp16 | fp32
device: str = "auto"  # where ranks run: auto (cuda if present, else cpu) | cpu | cuda | hpu
steps: int = 3  # training steps (at least 2): the timeline shows steps 1, 2 and the last
rank: int = 0  # which rank to inspect (0 .. the plan's world size - 1)
calc_params: str = "7B"  # calculator: model size to check
calc_dtype: str = "bf16"  # calculator: training precision (fp32 | bf16 | fp16)
calc_stage: int = 3  # calculator: ZeRO stage
calc_world_size: int = 8  # calculator: number of devices
calc_device: str = "H100"  # calculator: device type (T4, L4, A10G, A100-40GB, A100-80GB, H100, H200, Gaudi2, Gaudi3, MI300X)

# %% [markdown]
# ## Check the inputs
# All parameters, the calculator's included, are validated here: a mistake stops with one message naming it.

# %%
# %matplotlib inline
from IPython.display import HTML, Markdown, display

from labkit import memory, results, sizing, tabular, zero
from labkit.chapters import memory_inspection as chapter
from labkit.chapters import zero_stages
from labkit.plots import zero as zplots

plan = zero.make_plan(params, world_size, chapter.variant_token(stage, offload), dtype=dtype, device=device,
                      steps=steps, memory_summary=True)
chapter.check_rank(rank, plan.world_size)
calc = chapter.calculator(calc_params, calc_dtype, calc_stage, calc_world_size, calc_device)
print(tabular.wrapped(f"run: {plan.variants[0].label}, {plan.params:,} parameters, {plan.dtype}, "
                     f"{plan.world_size} x {plan.device} ({plan.why}); inspecting rank {rank}"))
print(tabular.wrapped(f"batch: {plan.batch}"))

# %% [markdown]
# ## Run it
# One DeepSpeed launch; every rank writes its own JSON file with a snapshot of its tensors at each phase.

# %%
report = zero.run_plan(plan)
run = report["configs"][0]
print(f"{run['label']} ran with {run['optimizer_class']}; median step {run['step_time_s'] * 1e3:.0f} ms")

# %% [markdown]
# ## Where the bytes went
# Counted after the backward pass of step 2, when parameters, gradients, master weights and Adam state all exist. Each
# row is one attribute of the engine or its ZeRO optimizer (tensors sharing storage are counted once).

# %%
holders = chapter.holder_rows(run, rank)
HTML(tabular.html_table([{"held by": h["holder"], "kind": memory.STATE_LABELS[h["kind"]], "where": h["location"],
                          "tensors": h["tensors"], "bytes": f"{h['bytes']:,}"} for h in holders],
                        ["held by", "kind", "where", "tensors", "bytes"], status_column=None))

# %%
display(zplots.holders_figure(holders, title=f"{run['label']}, rank {rank}: bytes by holder"))

# %% [markdown]
# The same bytes by kind, against labkit's model of DeepSpeed and the paper's term for that kind (the paper has no
# buffers; its K = 12 bytes/parameter is split into the fp32 master copy and the two Adam moments). Ranks on the CPU
# have one memory: what DeepSpeed keeps "on the host" (torch Adam's 4-byte `step` per tensor, offloaded states) is
# their device memory, and both columns count it there.

# %%
kinds = chapter.kind_rows(run, rank)
results.record("inspection", {"config": run["name"], "rank": rank, "kinds": kinds,
                              "measured_total": run["measured_total"][rank],
                              "predicted_total": run["predicted_deepspeed_total"],
                              "paper_total": run["predicted_paper_total"]})
HTML(tabular.html_table([{**k, **{c: (f"{k[c]:,}" if k[c] is not None else "-")
                                  for c in ("measured", "deepspeed_model", "paper", "difference")}} for k in kinds],
                        ["kind", "location", "measured", "deepspeed_model", "paper", "difference"], status_column=None))

# %% [markdown]
# ## The timeline: init → forward → backward → step
# Stacked: counted model-state bytes by kind at each snapshot; the sentence under the figure says when each kind
# appeared in this run. On a GPU the black line is `torch.cuda.memory_allocated` (relative to the run's start): the gap
# above the stack is activations and temporaries.

# %%
timeline = chapter.timeline_rows(run, rank)
results.record("timeline", timeline)
display(zplots.timeline_figure(run["timeline"][rank], title=f"{run['label']}, rank {rank}",
                               allocated_before=run["allocated_before"][rank]))
display(Markdown(chapter.timeline_note(timeline)))

# %%
if run["memory_summary"]:
    print(run["memory_summary"])  # torch.cuda.memory_summary() of rank 0 at the end of the run
else:
    print(tabular.wrapped(f"No CUDA allocator on this run ({report['device']}): the counts above come from the tensors "
                          "themselves; on a GPU this cell prints torch.cuda.memory_summary() of rank 0."))

# %% [markdown]
# ### The same run on this machine's one GPU
# With exactly one GPU the automatic plan inspected CPU ranks (partitioning needs two). The next cell repeats the run
# on that GPU as one rank, for its numbers and its allocator's own summary; elsewhere there is nothing to add.

# %%
reference = zero.one_device_reference(plan, device)
if reference is None:
    print(tabular.wrapped(f"Nothing to add: this run used {plan.world_size} x {plan.device} ({plan.why})."))
else:
    ref_report = zero.run_plan(reference)
    results.record("one_device", {"device": ref_report["device"],
                                  "rows": zero_stages.one_device_rows(report, ref_report, rank)})
    display(Markdown(zero_stages.one_device_note(report, ref_report) + " " + zero_stages.headroom_note(ref_report)))
    print(ref_report["configs"][0]["memory_summary"] or "")

# %% [markdown]
# ## Do I need multiple GPUs?
# The calculator applies labkit's DeepSpeed model (the model's shapes unknown: one flat tensor) to the calculator
# parameters, multiplies by a head-room factor for activations and buffers, and compares with the device's memory.
# The factor, 1.25, is an assumption (a common rule of thumb, `labkit.sizing.TRAINING_HEADROOM`), not a measurement:
# this chapter's ZeRO-3 run on one H200 (20M parameters, micro-batch 2 x 16 tokens: hardly any activations) peaked at
# 1.70x its model states (571.73 MB allocated against 336.48 MB; docs/benchmarks.md), so DeepSpeed's buffers and the
# step's temporaries alone can exceed it for a small model. On a 1-GPU machine the section above prints this run's own
# ratio.
# Change the parameters (or use the widgets below in JupyterLab) to try other sizes.
#
# ### Exercise: predict before the calculator answers
# How many devices of the calculator's type (`calc_device`) does training the calculator's model (`calc_params`,
# `calc_dtype`, ZeRO stage `calc_stage`) need at the least? ZeRO-3 model states are about 16 bytes per parameter
# divided by N, plus head-room. Write your number below (or `"none"` if no number of devices fits); the cell after
# the calculator checks it.

# %% tags=["exercise"]
my_min_devices = None  # your prediction: the smallest number of calc_device that fits, or "none"

# %%
print("\n".join(calc["lines"]))
print(f"smallest number of {calc_device} that fits: {calc['min_world_size'] or 'none: ' + calc['no_fit_reason']}")
results.record("fit", {k: calc[k] for k in ("fits", "need_bytes", "model_state_bytes", "capacity_bytes",
                                            "min_world_size")})
display(zplots.fit_figure(calc, title=f"{calc_params} {calc_dtype}, ZeRO-{calc_stage}, {calc_world_size} x {calc_device}"))

# %% tags=["exercise"]
display(Markdown(chapter.check_min_devices_prediction(calc, calc_device, my_min_devices)))

# %% tags=["solution"] jupyter={"source_hidden": true}
display(Markdown(chapter.min_devices_solution(calc, calc_device)))

# %%
try:  # optional: interactive version of the same calculator (JupyterLab); the cell above is the record
    import ipywidgets as w

    from labkit import controls

    display(controls.live_html(
        lambda params, dtype, stage, n, device: controls.preformatted(
            sizing.training_fit(memory.parse_count(params), dtype, stage, n, device)["lines"]),
        params=w.Text(calc_params), dtype=w.Dropdown(options=list(memory.TRAIN_DTYPES), value=calc_dtype),
        stage=w.IntSlider(calc_stage, 0, 3), n=w.IntSlider(calc_world_size, 1, 512),
        device=w.Dropdown(options=list(sizing.DEVICE_MEMORY_GB), value=calc_device)))
except ImportError:
    print("ipywidgets is not installed: change the calc_* parameters instead")

# %% [markdown]
# And for inference, weights only (× 1.2 head-room for KV cache and runtime): devices needed per dtype.

# %%
inference = sizing.inference_table(memory.parse_count(calc_params))
HTML(tabular.html_table([{"dtype": r["dtype"], "weights": tabular.format_bytes(r["weight_bytes"]), **r["devices"]}
                         for r in inference], ["dtype", "weights", *sizing.DEVICE_MEMORY_GB], status_column=None))

# %% [markdown]
# ## What this run showed

# %%
setup = f"{calc_params} in {calc_dtype} with ZeRO-{calc_stage} on {calc_world_size} x {calc_device}"
lines = chapter.closing_lines(run, rank, calc, setup, one_rank=plan.partitions_nothing,
                              reference=ref_report if reference is not None else None)
Markdown("\n".join(f"- {line}" for line in lines))

# %% [markdown]
# ## Troubleshooting
#
# - **OOMKilled (exit 137) while loading a model under ZeRO-3.** *Cause:* every rank materialises the full model
#   because `deepspeed.zero.Init` is not active. *Fix:* build the model inside `deepspeed.zero.Init()` (or create
#   `HfDeepSpeedConfig` before `from_pretrained`) ([DeepSpeed#1138](https://github.com/deepspeedai/DeepSpeed/issues/1138)).
# - **Offload: OOM in `pin_memory`, or the rank killed with -9.** *Fix:* `"pin_memory": false` or more host memory;
#   check the host side with the calculator first ([DeepSpeed#2676](https://github.com/deepspeedai/DeepSpeed/issues/2676)).
# - **The counted bytes and `torch.cuda.memory_allocated` differ.** Expected: the allocator also holds activations,
#   temporaries and its own rounding; the gap above the stacked model states in the timeline is exactly that.
# - **`rank` refused in the first cell.** Pick a rank below the world size it printed (ranks count from 0).
#
# **Docs:** [ZeRO tutorial](https://www.deepspeed.ai/tutorials/zero/) ·
# [DeepSpeed memory estimators](https://deepspeed.readthedocs.io/en/latest/memory.html) ·
# [ZeRO paper](https://arxiv.org/abs/1910.02054).
