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
#     cell_id_prefix: acc
#     test_parameters:
#       steps: 12
#       zero_stage: 3
# ---

# %% [markdown]
# # 06 · The accelerate route: plan a model, write the config, launch it
#
# **Objectives.** In this chapter you size a model for inference and for ZeRO training before touching a GPU, check the usual stage advice against those numbers, answer `accelerate config`'s questions as parameters, and run a real `accelerate launch` with DeepSpeed that trains a small causal LM and then generates with it.
#
# **Prerequisites.** Chapters 02 and 05 (ZeRO stages, where the bytes go).
#
# **Time** at the defaults: 13-29 s on an idle 2-core CPU machine and 35-41 s on one H100 (CPU: four runs, two of them on CPUs without AVX-512, 2026-12-06 and 12-07; H100: two runs, 2026-12-06; docs/benchmarks.md).
#
# **Contents:** Plan the model · accelerate config, answered · The config file · Launch it · Inference with the trained model · The three FAQs · What this run showed.
#
# Hugging Face accelerate is a thin launcher and wrapper: `accelerate config` asks a few questions and writes a YAML
# file, `accelerate launch --config_file FILE script.py` starts one process per device, and inside the script
# `Accelerator.prepare` hands the model to DeepSpeed. Nothing in that chain says loudly when DeepSpeed is *not* used,
# so the training script here checks it.

# %% tags=["parameters"]
model_params: str = "7B"  # the model to plan for (sizing tables), e.g. 350M, 7B, 70B
plan_dtype: str = "bf16"  # training precision of the plan: bf16 | fp16 | fp32
device_type: str = "H100"  # device of the plan: T4, L4, A10G, A100-40GB, A100-80GB, H100, H200, Gaudi2, Gaudi3, MI300X
plan_devices: int = 8  # how many of them you would train on
num_machines: int = 1  # accelerate config: machines (1 here; an MPIJob's worker pods on a cluster)
num_processes: int = 0  # accelerate config: total processes; 0 for automatic: all GPUs, else 2 CPU ranks
zero_stage: int = 2  # accelerate config: ZeRO stage 0-3
offload_optimizer: str = "none"  # accelerate config: none | cpu (CPU builds DeepSpeedCPUAdam once: minutes)
offload_param: str = "none"  # accelerate config: none | cpu (stage 3 with offload_optimizer cpu)
mixed_precision: str = "bf16"  # accelerate config: bf16 | fp16 (GPUs) | no (fp32)
dynamo_backend: str = "no"  # accelerate config: torch dynamo; only no in this chapter (compiling costs minutes)
device: str = "auto"  # where ranks run: auto (cuda if present, else cpu) | cpu | cuda
steps: int = 30  # training steps per rank (at least 2: the step time is read after the first)

# %% [markdown]
# ## Plan the model
# All parameters are checked first: a mistake stops here with one message naming it. Then, for `model_params`, the
# weights for inference per dtype and the devices of each type that hold them (× 1.2 head-room for KV cache and
# runtime), from `labkit.sizing`.

# %%
# %matplotlib inline
import dataclasses
import os
import tempfile

from IPython.display import HTML, Markdown, display

from labkit import accelerate_route, launch, manifests, memory, results, sizing, tabular
from labkit.chapters import accelerate as chapter
from labkit.plots import training as tplots

params = memory.parse_count(model_params, "model_params")
advice = chapter.stage_advice(params, plan_dtype, device_type, plan_devices)
plan = chapter.plan_run(num_machines=num_machines, num_processes=num_processes, zero_stage=zero_stage,
                        mixed_precision=mixed_precision, offload_optimizer=offload_optimizer,
                        offload_param=offload_param, dynamo_backend=dynamo_backend, device=device, steps=steps,
                        run_dir=tempfile.mkdtemp(prefix="accelerate-", dir=os.environ.get("LABKIT_RUN_DIR")))
inference = sizing.inference_table(params)
HTML(tabular.html_table([{"dtype": r["dtype"], "weights": tabular.format_bytes(r["weight_bytes"]), **r["devices"]}
                         for r in inference], ["dtype", "weights", *sizing.DEVICE_MEMORY_GB], status_column=None))

# %% [markdown]
# Training needs far more than the weights: ZeRO splits parameters, gradients and Adam state over N devices. Per
# device, labkit's model of DeepSpeed (× 1.25 head-room for activations and buffers), fastest variant first:

# %%
fit = chapter.fit_rows(params, plan_dtype, device_type)
display(HTML(tabular.html_table(fit, list(fit[0]), status_column=None)))
display(Markdown(advice["text"]))
results.record("plan", {"params": params, "advice": advice})

# %% [markdown]
# ## accelerate config, answered
# `accelerate config` asks these questions one by one; here each answer is a parameter of this notebook, and the
# guide's advice stands beside it.

# %%
HTML(tabular.html_table(chapter.question_rows(plan.config, dynamo_backend), ["question", "answer", "advice"],
                        status_column=None))

# %% [markdown]
# ## The config file
# What `accelerate config` would have saved, written by labkit and read back through accelerate's own loader (the one
# `accelerate launch` uses); the last line is the command line that writes the same file.

# %%
config_file = plan.config.write(plan.config_file())
loaded = accelerate_route.load_with_accelerate(config_file)
print(plan.config.to_yaml())
print(tabular.wrapped(f"accelerate reads it as {type(loaded).__name__}: {loaded.distributed_type}, ZeRO stage "
                     f"{loaded.deepspeed_config['zero_stage']}, {loaded.num_processes} process(es); saved as "
                     "accelerate_config.yaml in this run's folder"))
print("the same file from a shell:", plan.config.command_line("--out accelerate_config.yaml"))

# %% [markdown]
# ## Launch it
# One `accelerate launch` of the script `labkit.ranks.accelerate_train`: a Llama-shaped causal LM built from a
# `transformers` config (random weights, nothing downloaded) learns to count (every sequence is *k, k+1, k+2, …*).
# Right after `prepare` the script checks that the model is a `DeepSpeedEngine` at the configured stage and that
# accelerate's process count is the world size: `accelerate launch --cpu` or `ACCELERATE_USE_CPU=1` would otherwise
# train without DeepSpeed and exit 0.

# %%
print("command:", " ".join(launch.shown_command(plan.command())).replace(str(plan.run_dir), "RUN_DIR"))
report = accelerate_route.run_training(plan, progress=True)
r0 = report["ranks"][0]
print(tabular.wrapped(f"{len(report['ranks'])} rank(s), each a {r0['check']['engine']} at ZeRO stage "
                     f"{r0['check']['zero_stage']} ({r0['optimizer_class']}); loss {r0['losses'][0]:.2f} -> "
                     f"{r0['losses'][-1]:.3f}; {report['wall_s']:.0f} s including start-up"))

# %%
display(tplots.loss_figure({f"rank {r['rank']}": r["losses"] for r in report["ranks"]},
                           title=f"ZeRO-{plan.config.stage} through accelerate: training loss"))

# %% [markdown]
# ## Inference with the trained model
# Greedy decoding through the same engine on every rank: under ZeRO-3 each forward pass gathers every layer's
# partitioned parameters from all ranks (ZeRO-3 inference), so all ranks must take the same steps.

# %%
right = chapter.tokens_right(r0)
print(f"prompt {r0['prompt']} -> generated {r0['generated']}")
print(f"{right} of {len(r0['expected'])} tokens continue the count; {r0['inference_s'] * 1e3:.0f} ms on rank 0")
print(f"the model: {r0['params']:,} parameters; the run: {r0['world_size']} rank(s)")
results.record("run", {"stage": r0["check"]["zero_stage"], "world_size": r0["world_size"],
                       "engine": r0["check"]["engine"], "loss_first": r0["losses"][0], "loss_last": r0["losses"][-1],
                       "generated_right": right, "generated": len(r0["expected"]), "wall_s": report["wall_s"]})

# %% [markdown]
# ## The three FAQs
# ### Exercise: predict before the table answers
# From ZeRO stage 1 on, each rank keeps only its share of Adam's two fp32 moments. How many bytes of Adam moments does
# rank 0 hold? (The cell above printed the model's parameters and the run's ranks.)

# %% tags=["exercise"]
my_moments_bytes = None  # your prediction in bytes

# %%
rows = chapter.rank_memory_rows(report)
results.record("memory", rows)
HTML(tabular.html_table([{k: (tabular.format_bytes(v) if isinstance(v, int) and k != "rank" else v if v is not None
                              else "-") for k, v in row.items()} for row in rows], list(rows[0]), status_column=None))

# %% tags=["exercise"]
display(Markdown(chapter.check_moments_prediction(report, my_moments_bytes)))

# %% tags=["solution"] jupyter={"source_hidden": true}
display(Markdown(chapter.moments_solution(report)))

# %%
display(Markdown("\n\n".join(chapter.faq_answers(report, plan, advice, model_params))))

# %% [markdown]
# ## The same config in an MPIJob
# In the interactive MPIJob (chapter 03) the launcher pod runs the same file with the operator's hostfile: set
# `--num-machines` to the worker pods and `--num-processes` to all their devices. `labkit accelerate config ... --job
# NAME` writes the file into the job's folder on `/shared` (every pod of the job mounts it) and prints the line to exec
# in the launcher; both lines are the same on the local and the Kubernetes backend (add `--backend kubernetes`):

# %%
job_name, workers, slots = "deepspeed-interactive", 2, 4
namespace = manifests.default_namespace()  # the job commands' default (the lab's own): both lines name it, as the CLI's do
on_job = dataclasses.replace(plan.config, num_processes=workers * slots, num_machines=workers)
print(on_job.command_line(f"--job {job_name} --backend kubernetes -n {namespace}"))
print(f"labkit job exec {job_name} --backend kubernetes -n {namespace} -- " + " ".join(accelerate_route.launch_command(
    f"{accelerate_route.job_run_dir(job_name)}/accelerate_config.yaml", ["..."],
    hostfile=accelerate_route.CLUSTER_HOSTFILE, executable=["accelerate"])))

# %% [markdown]
# ## What this run showed

# %%
lines = chapter.closing_lines(report, advice, f"{model_params} in {plan_dtype} on {plan_devices} x {device_type}")
Markdown("\n".join(f"- {line}" for line in lines))

# %% [markdown]
# ## Troubleshooting
#
# - **The run "works" but DeepSpeed was never used** (steps slow, no ZeRO). *Cause:* `--cpu` or
#   `ACCELERATE_USE_CPU=1` make accelerate fall back to plain DDP or one process, exit code 0. *Fix:* the kit's
#   training script checks after `prepare` that the model is a `DeepSpeedEngine` at the requested stage and stops with
#   one line otherwise ([accelerate#96](https://github.com/huggingface/accelerate/issues/96)).
# - **`When using deepspeed_config_file, the following accelerate config variables will be ignored`**, or
#   **`gradient_accumulation_steps cannot be set to 'auto'`**. *Fix:* define each value in one file, integers rather
#   than "auto" in a custom loop ([accelerate PR#941](https://github.com/huggingface/accelerate/pull/941)).
# - **Multi-node with `--deepspeed_multinode_launcher openmpi`: `openmpi backend does not support limiting num
#   nodes/gpus`.** *Cause:* accelerate adds `--num_gpus`, which DeepSpeed's openmpi runner rejects. *Fix:* the kit's
#   config sets `deepspeed_exclusion_filter: ''` so accelerate passes `--exclude ""` instead; size the job with the
#   hostfile's slots ([accelerate#3319](https://github.com/huggingface/accelerate/issues/3319)).
# - **`num_processes` confusion on several machines.** It is the total over all machines, not per machine
#   ([accelerate#2521](https://github.com/huggingface/accelerate/issues/2521)).
# - **OOMKilled loading a large model under ZeRO-3.** Set `zero3_init_flag: true` so weights are partitioned as they
#   load ([DeepSpeed#1138](https://github.com/deepspeedai/DeepSpeed/issues/1138)).
#
# **Docs:** [accelerate + DeepSpeed](https://huggingface.co/docs/accelerate/usage_guides/deepspeed) ·
# [accelerate launch](https://huggingface.co/docs/accelerate/basic_tutorials/launch) ·
# [DeepSpeed config JSON](https://www.deepspeed.ai/docs/config-json/).
