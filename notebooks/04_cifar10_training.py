# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
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
#     cell_id_prefix: cifar
#     test_parameters:
#       epochs: 2
#       max_train: 1280
#       width: 0.25
# ---

# %% [markdown]
# # 04 · CIFAR-10 through DeepSpeed, fast and checkpointed
#
# **Objectives.** In this chapter you train CIFAR-10 through the DeepSpeed engine with checkpoints and resume, and read its throughput against two reference recipes.
#
# **Prerequisites.** Chapters 00 and 02.
#
# **Time** at the defaults: 20-38 s on an idle 2-core CPU machine and 24-28 s on one H100 (CPU: four runs, two of them on CPUs without AVX-512, 2026-12-06 and 12-07; H100: two runs, 2026-12-06; docs/benchmarks.md).
#
# **Contents:** The plan · The DeepSpeed config · Train · Curves · What this run showed.
#
# The usual first DeepSpeed lab trains DeepSpeedExamples' `cifar10_deepspeed.py`: a 62k-parameter LeNet at batch 16,
# fed image by image by a CPU pipeline. On an H200 that does about **2,700 images/s**: the GPU mostly waits. airbench94
# trains a small CNN on the same GPU at about **320,000 images/s** without DeepSpeed. This chapter trains through the
# DeepSpeed engine and measures how far toward the second number it gets (the closing cell says, for this run):
#
# - the whole data set lives **on the device** as uint8; each batch is cropped and flipped there by one gather, no
#   per-image Python, and fed as `channels_last`;
# - mixed precision through DeepSpeed's `torch_autocast` section (fp32 weights, bf16 compute) rather than its `bf16`
#   section, whose flattened bf16 weights and fp32 master copy cost more per step on a small network;
# - DeepSpeed's **throughput timer is switched off**: by default it synchronises the device twice per step, which idles
#   a GPU between small steps (`bench/cifar_throughput.py` measures each of these choices).
#
# The same code trains on CPU ranks (gloo). By default (`world_size = 0`) it uses every visible GPU, or 2 CPU ranks on
# a machine without one, so the lab is distributed everywhere. More than one rank starts local ranks through the
# DeepSpeed launcher (the command is shown); it writes checkpoints that `--resume` continues from, and every output says whether the data was
# real CIFAR-10 or **synthetic** (generated images in the CIFAR-10 file format, for machines without the data set).

# %% tags=["parameters"]
data_dir: str = ""  # folder holding cifar-10-batches-py (in a cluster: the shared PVC mount); empty: none
synthetic: bool = True  # train on generated images in the CIFAR-10 format instead (every output says "synthetic")
epochs: int = 3  # passes over the training images
model: str = "resnet"  # resnet (small residual CNN, airbench94 widths) | lenet (DeepSpeedExamples' 62k-parameter net)
stage: int = 0  # ZeRO stage 0-3 (partitioning pays off for big models; this one is small)
dtype: str = "auto"  # auto (bf16 on a GPU or Gaudi, fp32 on CPU) | bf16 | fp16 | fp32
world_size: int = 0  # ranks; 0 for automatic: all visible GPUs, or 2 CPU ranks without one; 1 trains in this kernel
micro_batch: int = 0  # images per rank per step; 0: automatic (1024 on an accelerator, 64 on CPU)
checkpoint_dir: str = ""  # checkpoints and metrics (the shared PVC in a cluster); empty: a temporary folder, removed
resume: bool = False  # continue the run whose checkpoints are in checkpoint_dir (from its newest complete one)
device: str = "auto"  # auto (cuda, else hpu, else cpu) | cuda | hpu | cpu
max_train: int = 0  # training images to use; 0: automatic (all on an accelerator, 2,000 on CPU)
width: float = 0.0  # resnet channel-width multiplier; 0: automatic (1.0 on an accelerator, 0.5 on CPU)
launcher: str = "auto"  # auto (in-process for 1 rank, else deepspeed) | deepspeed | openmpi (the MPIJob path) | mpirun
compile_model: bool = False  # compile through DeepSpeed's engine.compile(): the first step pays compilation (tens of seconds), later steps run faster on a GPU; rarely pays on a CPU

# %% [markdown]
# ## The plan
#
# Every parameter is checked before anything starts: an unknown model or dtype, a ZeRO stage outside 0-3, fp16 on a
# CPU, a missing data folder with `synthetic=False`, a `checkpoint_dir` that holds another run's checkpoints without
# `resume=True` — each stops here with one message naming the parameter and the fix. Automatic values are resolved for the device.

# %%
# %matplotlib inline
import json

from IPython.display import HTML, Markdown, display

from labkit import results, tabular
from labkit.chapters import cifar, exercises
from labkit.plots.training import training_curves_figure

plan = cifar.plan(
    data_dir=data_dir,
    synthetic=synthetic,
    epochs=epochs,
    model=model,
    stage=stage,
    dtype=dtype,
    world_size=world_size,
    micro_batch=micro_batch,
    checkpoint_dir=checkpoint_dir,
    device=device,
    launcher=launcher,
    max_train=max_train,
    width=width,
    resume=resume,
    compile_model=compile_model,
)
cfg = plan.config
print(tabular.wrapped(f"world_size {plan.world_size} ({plan.why})"))
print(tabular.wrapped(
    f"{cfg.data_kind} data, {plan.train_images:,} training images; {cfg.model} (width {cfg.width}); "
    f"{plan.world_size} rank(s) on {cfg.device} via {plan.launcher}; {cfg.dtype}, ZeRO-{cfg.stage}; "
    f"global batch {cfg.global_batch}; {cfg.epochs} epoch(s)" + ("; compiled (engine.compile)" if cfg.compile else "")
))
if plan.start_step:
    print(f"resuming: the newest complete checkpoint is at step {plan.start_step} of {plan.total_steps}")

# %% [markdown]
# ### Exercise: how many optimizer steps will this run take?
# From the plan above (training images, global batch, epochs), predict the number of optimizer steps this run takes.
# Each epoch drops its last incomplete global batch, so that every rank always sees a full micro-batch. A resumed run
# (`resume=True`) takes only the steps after its checkpoint: the plan above then says at which step it resumes. Then
# run the check.

# %% tags=["exercise"]
my_steps = None  # your prediction: optimizer steps of this run

# %% tags=["exercise"]
display(Markdown(exercises.verdict(my_steps, plan.steps_this_run, name="my_steps")))

# %% tags=["solution"] jupyter={"source_hidden": true}
display(Markdown(cifar.steps_solution(plan)))

# %% [markdown]
# ## The DeepSpeed config
#
# Built from the parameters; save it and reuse it with any launcher:
# `deepspeed --module labkit.ranks.train --deepspeed_config ds_config.json --data-dir /data` (see `python -m labkit.ranks.train --help`).
# Note `torch_autocast` (or no precision section on CPU, where fp32 is faster) and `"timers": {"throughput":
# {"enabled": false}}`.

# %%
(plan.workdir / "ds_config.json").write_text(json.dumps(plan.deepspeed_config, indent=2))
print(json.dumps(plan.deepspeed_config, indent=2))
if plan.command:
    print("\nlaunch command:\n" + plan.command_text())

# %% [markdown]
# ## Train
#
# One rank trains inside this kernel; more ranks run as separate processes whose output streams below. Each epoch
# reports training loss and accuracy (on augmented images), test accuracy and images/s of the training steps alone.

# %%
run = cifar.execute(plan, on_output=cifar.printer())
records = run["records"]

# %% [markdown]
# ## Curves
#
# Loss per logged step (dotted lines: epoch ends), accuracy per epoch against chance, and throughput per epoch. Is the
# first epoch slower? On a GPU it pays for cuDNN autotuning and memory-pool growth. Does the loss step down at each
# epoch start? The sentences under the figure say what this run measured.

# %%
shown = cifar.summarize(records)
display(training_curves_figure(records))
Markdown(cifar.first_epoch_note(shown) + " " + cifar.epoch_edge_note(records))

# %%
rows = cifar.epochs_table(records)
display(HTML(tabular.html_table(rows, list(rows[0]), status_column=None)))
for name, value in {"summary": shown, "epochs": rows, "deepspeed_config": plan.deepspeed_config, "records": records}.items():
    results.record(name, value)

# %% [markdown]
# ## What this run showed

# %%
Markdown(cifar.closing_note(shown))

# %% [markdown]
# ## Clean up
#
# A temporary run folder (no `checkpoint_dir` given) is removed now; a `checkpoint_dir` you chose is kept, with its
# checkpoints and `metrics.jsonl`: run again with `resume=True` to continue (a partial or corrupt newest checkpoint is
# skipped in favour of the one before), or from a terminal: `labkit train --checkpoint-dir DIR --resume ...`.

# %%
plan.close()

# %% [markdown]
# ## Troubleshooting
#
# - **`Duplicate GPU detected: rank 1 and rank 0 both on CUDA device`.** *Cause:* a script that reads
#   `args.local_rank`, which only the `deepspeed` launcher sets. *Fix:* read `LOCAL_RANK` (labkit does) and call
#   `torch.cuda.set_device` first ([DeepSpeed PR#1164](https://github.com/deepspeedai/DeepSpeed/pull/1164)).
# - **`checkpoint_dir ... already holds checkpoints of another run`.** Pass `resume=True` to continue it, or an empty
#   folder.
# - **`data_dir: no cifar-10-batches-py`.** Download CIFAR-10 (python version) into the folder, or keep
#   `synthetic=True`.
# - **`errno: 98 - Address already in use`.** A run stopped elsewhere still holds the port; labkit picks a free port per
#   launch, so look for leftover `labkit.ranks.train` processes ([DeepSpeed#3916](https://github.com/deepspeedai/DeepSpeed/issues/3916)).
# - **The first epoch is much slower on a GPU.** Expected: cuDNN autotuning and, with `compile_model=True`,
#   compilation (the closing sentence gives this run's first-step time).
#
# **Docs:** [DeepSpeed CIFAR-10 tutorial](https://www.deepspeed.ai/tutorials/cifar-10/) ·
# [DeepSpeed checkpointing](https://deepspeed.readthedocs.io/en/latest/model-checkpointing.html) ·
# [airbench](https://github.com/KellerJordan/cifar10-airbench).
