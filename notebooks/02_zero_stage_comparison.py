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
#     cell_id_prefix: zero
#     test_parameters:
#       offload: optimizer
#       params: 3M
#       stages: 0,1,2,3
#       steps: 3
# ---

# %% [markdown]
# # 02 · ZeRO stages, measured
#
# **Objectives.** In this chapter you predict each ZeRO stage's per-rank model-state bytes (the paper's formulas and DeepSpeed as implemented), measure them in one real DeepSpeed launch, and weigh memory against step time.
#
# **Prerequisites.** Chapters 00-01; the ZeRO paper's 16Ψ accounting helps.
#
# **Time** at the defaults: 30-61 s on an idle 2-core CPU machine and 60-66 s on one H100 (CPU: four runs, two of them on CPUs without AVX-512, 2026-12-06 and 12-07; H100: two runs, 2026-12-06; docs/benchmarks.md). The upper end is a CPU without AVX-512, where bf16 matrix products are slow: there the ranks train on fewer tokens per step (the plan says so), which leaves the model states, this chapter's lesson, unchanged.
#
# **Contents:** The plan · Predictions first · Run every configuration in one launch · Model states per rank · What each stage costs in time · What this run showed.
#
# Data-parallel training keeps a full copy of the **model states** on every rank: the parameters, their gradients and
# the optimizer state (for Adam in mixed precision: an fp32 master copy plus two fp32 moments). ZeRO (Rajbhandari et
# al., [arXiv 1910.02054](https://arxiv.org/abs/1910.02054)) partitions them over the N ranks instead:
#
# | stage | partitions | paper's bytes per rank (mixed precision, Ψ parameters) |
# | --- | --- | --- |
# | 0 | nothing (plain data parallel) | 16Ψ |
# | 1 | optimizer states | 4Ψ + 12Ψ/N |
# | 2 | + gradients | 2Ψ + 14Ψ/N |
# | 3 | + parameters | 16Ψ/N |
#
# This notebook runs each stage as a **real DeepSpeed job** (one launch of `world_size` local ranks; gloo on CPU, NCCL
# on GPUs) and counts, on every rank, every tensor the engine holds. It compares the count with two predictions: the
# paper's formulas and labkit's model of what DeepSpeed 0.19 actually allocates (`labkit.memory.deepspeed_model_states`).
# Optimizer offload ("ZeRO-Offload") moves the fp32 master weights, gradients and Adam state to host memory.

# %% tags=["parameters"]
params: str = "20M"  # model size: parameters of the MLP used for the comparison (e.g. 4M, 20M; 335M, 1.3B on GPUs)
world_size: int = 0  # data-parallel ranks the stages partition over; 0 for automatic: all GPUs if 2+, else 2 CPU ranks
stages: str = "0,1,2,3"  # ZeRO stages to compare; also variants such as 2+opt (optimizer offload), 3+opt+param
offload: str = "optimizer"  # also run each listed stage from 1 up offloaded: none | optimizer | optimizer+param
dtype: str = "auto"  # training precision: auto (bf16) | bf16 | fp16 | fp32
device: str = "auto"  # where ranks run: auto (cuda if present, else cpu) | cpu | cuda | hpu
steps: int = 4  # training steps per configuration (at least 2; the first is warm-up, lazily created state appears there)

# %% [markdown]
# ## The plan
# Every input is checked before anything starts (a bad stage, world size, dtype or offload combination, or a model
# whose states cannot fit this machine's memory, stops here with one message naming the parameter). The model is a stack of transformer-style MLP blocks sized to `params`. With
# `world_size = 0` the plan picks the ranks itself and says why: partitioning needs at least 2 ranks, so a machine with
# one GPU (or none) compares the stages on 2 CPU ranks. The launch line printed is the one the run below starts, but
# for `--master_port`: labkit adds a port that is free at launch (DeepSpeed's default, 29500, may be held by another
# job on this machine).

# %%
# %matplotlib inline
from IPython.display import HTML, Markdown, display

from labkit import memory, results, tabular, zero
from labkit.chapters import zero_stages
from labkit.plots import zero as zplots

plan = zero.make_plan(params, world_size, stages, offload=offload, dtype=dtype, device=device, steps=steps)
print(f"{plan.params:,} parameters: {plan.layers} x [Linear({plan.hidden}, {4 * plan.hidden}), GELU, "
      f"Linear({4 * plan.hidden}, {plan.hidden})], {plan.dtype}, {plan.world_size} x {plan.device}")
print(tabular.wrapped(f"ranks: {plan.world_size} x {plan.device} ({plan.why})"))
print(tabular.wrapped(f"batch: {plan.batch}"))
print(tabular.wrapped("configurations: " + ", ".join(v.label for v in plan.variants)))
print("launch:", " ".join(plan.command()))

# %% [markdown]
# ## Predictions first
# Before running anything, both models predict the per-rank bytes. labkit's model follows DeepSpeed's code: flat
# buffers padded to multiples of 2·N elements (ZeRO-1/2), per-tensor partitions (ZeRO-3), an fp32 master copy even in
# fp32 training, small parameters that ZeRO-3 keeps whole, and buffers that exist only with offload.

# %%
pred_rows = []
for v in plan.variants:
    p = plan.predictions(v)
    pred_rows.append({"config": v.label, "paper formula": p["paper"]["formula"],
                      "paper": tabular.format_bytes(p["paper"]["total"]),
                      "DeepSpeed model": tabular.format_bytes(sum(sum(x.values()) for x in p["deepspeed"].values())),
                      "of which on host": tabular.format_bytes(sum(p["deepspeed"]["host"].values()))})
HTML(tabular.html_table(pred_rows, list(pred_rows[0]), status_column=None))

# %% [markdown]
# ### Exercise: predict before you measure
# This run uses the world size above. Predict ZeRO-3's model states per rank for the same model on **4** ranks, in
# MB, write it below and run the two cells; the check compares it with the paper's formula. (The solution cell is
# collapsed: click its bar to open it.)

# %% tags=["exercise"]
my_zero3_mb = None  # your prediction, in MB, e.g. 123.4

# %% tags=["exercise"]
display(Markdown(zero_stages.check_zero3_prediction(plan.params, plan.dtype, my_zero3_mb)))

# %% tags=["solution"] jupyter={"source_hidden": true}
# ZeRO-3 partitions all model states: 16 bytes per parameter in mixed precision (2 + 2 + 12), divided by N.
display(Markdown(zero_stages.zero3_solution(plan.params, plan.dtype)))

# %% [markdown]
# ## Run every configuration in one launch
# One DeepSpeed launch runs all configurations: inside each rank the probe initializes an engine, trains `steps`
# steps, snapshots the tensors after init, forward, backward and step, frees the engine and goes on (process start-up
# dominates on a small machine). On CPU the offloaded optimizer runs torch's AdamW on the host
# (`"zero_force_ds_cpu_optimizer": false`) instead of DeepSpeedCPUAdam, which would first compile for minutes; on a GPU
# machine DeepSpeed users normally get DeepSpeedCPUAdam (AVX kernels), which steps several times faster.

# %%
report = zero.run_plan(plan)
print(f"{len(report['configs'])} configurations in {report['wall_s']:.0f} s (including start-up)")

# %% [markdown]
# ## Model states per rank
# Bars: bytes counted on rank 0 after the backward pass of a steady step (all model states coexist there), by kind;
# hatched parts live in host memory. Diamonds: labkit's DeepSpeed model. Red lines: the paper's formula.

# %%
display(zplots.stage_memory_figure(report))

# %%
rows = zero_stages.summary_rows(report)
table = [{"config": r["config"], "measured": tabular.format_bytes(r["measured_total"]),
          "DeepSpeed model": tabular.format_bytes(r["deepspeed_model"]),
          "error": f"{r['rel_error_deepspeed']:.4%}", "paper": tabular.format_bytes(r["paper"]),
          "paper formula": r["paper_formula"], "step ms": f"{r['step_ms']:.0f}",
          "peak allocated": tabular.format_bytes(r["peak_allocated"]) if r["peak_allocated"] else "n/a (CPU)"}
         for r in rows]
results.record("zero_comparison", {"device": report["device"], "dtype": report["dtype"],
                                   "world_size": report["world_size"], "params": report["params"], "rows": rows})
HTML(tabular.html_table(table, list(table[0]), status_column=None))

# %% [markdown]
# ## What each stage costs in time
# Partitioning trades memory for communication: ZeRO-3 gathers parameters before every layer in forward and backward,
# and offload moves gradients and weights across the host link and runs the optimizer on the CPU. On a small shared
# CPU these times are noisy and communication is cheap shared memory; the 2 × H200 numbers in `docs/benchmarks.md` show
# the real cost (ZeRO-3 about 2.8x and optimizer offload about 15x the step time of ZeRO-0 there).

# %%
display(zplots.step_time_figure(report))

# %% [markdown]
# ## The same stages on this machine's one GPU
# With exactly one GPU, the automatic plan compared the stages on CPU ranks, because partitioning needs two. To tie
# the lesson to the GPU you have, the next cell runs the same configurations once more on that GPU, as one rank:
# predict first what the stages will hold there. (On a machine with no GPU, or with 2 or more, there is nothing to add.)

# %%
reference = zero.one_device_reference(plan, device)
if reference is None:
    print(tabular.wrapped(f"Nothing to add: the comparison ran on {plan.world_size} x {plan.device} ({plan.why})."))
else:
    ref_report = zero.run_plan(reference)
    one_rows = zero_stages.one_device_rows(report, ref_report)
    results.record("zero_one_device", {"device": ref_report["device"], "rows": one_rows})
    side = [{"config": r["config"], f"per rank, {plan.world_size} x cpu": tabular.format_bytes(r["per_cpu_rank"]),
             f"1 x {reference.device}": tabular.format_bytes(r["one_device"]),
             f"of which on the {reference.device}": tabular.format_bytes(r["one_device_on_device"]),
             f"step ms, 1 x {reference.device}": f"{r['one_device_step_ms']:.0f}"} for r in one_rows]
    display(HTML(tabular.html_table(side, list(side[0]), status_column=None)))
    display(Markdown(zero_stages.one_device_note(report, ref_report)))

# %% [markdown]
# ## What this run showed

# %%
results.record("zero_agreement", {c["name"]: {"rel_error_deepspeed": c["rel_error_deepspeed"],
                                              "rel_error_paper": c["rel_error_paper"]} for c in report["configs"]})
display(Markdown("\n".join(f"- {line}" for line in zero_stages.conclusions(report))))

# %% [markdown]
# **Scaling up.** On a GPU machine run the same notebook with `params="335M"` (or more) and `device="auto"`, or from a
# shell `labkit zero --stages 0,1,2,3 --offload optimizer --world-size 8 --params 1.3B --json out.json`. The recorded
# 2 × H200 numbers are in `docs/benchmarks.md` (section "ZeRO stages"); notebook 05 inspects a single run rank by rank.

# %% [markdown]
# ## Troubleshooting
#
# - **`train_batch_size is not equal to micro_batch_per_gpu * gradient_acc_step * world_size`.** *Cause:* a config
#   written for another world size. *Fix:* set only `train_micro_batch_size_per_gpu` and
#   `gradient_accumulation_steps` ([DeepSpeed#6914](https://github.com/deepspeedai/DeepSpeed/issues/6914)).
# - **Offload dies with an OOM in `pin_memory`, or the rank is killed (-9) while the GPU idles.** *Cause:* pinned
#   host memory counts against the container's memory limit. *Fix:* `"pin_memory": false`, or a larger limit
#   ([DeepSpeed#2676](https://github.com/deepspeedai/DeepSpeed/issues/2676)).
# - **`Error building extension 'cpu_adam'`.** *Cause:* DeepSpeedCPUAdam compiles at first use and the image lacks
#   headers or a compiler. *Fix:* this notebook uses torch's AdamW on CPU (`zero_force_ds_cpu_optimizer: false`); in
#   your own jobs prebuild with `DS_BUILD_CPU_ADAM=1` ([DeepSpeed#1846](https://github.com/deepspeedai/DeepSpeed/issues/1846)).
# - **`Watchdog caught collective operation timeout`.** *Cause:* one rank is late (an op build, a download, a dead
#   peer). *Fix:* `NCCL_DEBUG=INFO`, prebuild ops; labkit names the first rank that died
#   ([pytorch#118369](https://github.com/pytorch/pytorch/issues/118369)).
# - **`world_size: 2 ranks but only 1 CUDA device(s)`.** Use `world_size = 0` (automatic) or `device = "cpu"`.
#
# **Docs:** [ZeRO tutorial](https://www.deepspeed.ai/tutorials/zero/) ·
# [ZeRO-Offload](https://www.deepspeed.ai/tutorials/zero-offload/) ·
# [DeepSpeed config JSON](https://www.deepspeed.ai/docs/config-json/).
