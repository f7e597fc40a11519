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
#     cell_id_prefix: env
#     test_parameters:
#       api_timeout_s: 1.0
# ---

# %% [markdown]
# # 00 · Environment check
#
# **Objectives.** In this chapter you check that this machine can run every later chapter (Python, torch, CUDA/NCCL or Gaudi, DeepSpeed and its ops, MPI, the notebook stack, `/dev/shm`, the kubeconfig) and read the fix for each warning.
#
# **Prerequisites.** `make install` (or `make run`) has run; nothing else.
#
# **Time** at the defaults: 4-6 s on an idle 2-core CPU machine and 7 s on one H100 (CPU: four runs, two of them on CPUs without AVX-512, 2026-12-06 and 12-07; H100: two runs, 2026-12-06; docs/benchmarks.md).
#
# **Contents:** Run the checks · Summary by group · What to fix · What this run showed.
#
# Before anything trains, find out what this machine can do. This chapter runs the same checks as `labkit check`:
# Python, the torch build (CPU, CUDA or Gaudi), NCCL, DeepSpeed and which of its C++/CUDA ops can be compiled here
# (in the spirit of `ds_report`), the notebook tooling, the CPU (cores, and whether torch computes bf16 natively),
# `/dev/shm`, huge pages, the NCCL variables, MPI and the Kubernetes configuration.
#
# Each check ends as **pass**, **warn** or **fail**, with a fix. A check *fails* only when the kit itself cannot work
# (no torch, no DeepSpeed, no notebook runner, a `TORCH_CUDA_ARCH_LIST` that breaks DeepSpeed's op builds on a GPU
# machine). What a laptop is expected to lack (GPUs, NCCL, Gaudi, a cluster) only *warns*.

# %% tags=["parameters"]
device: str = "auto"  # device later chapters will use: auto (cuda, else hpu, else cpu), cpu, cuda or hpu
kubeconfig: str = ""  # kubeconfig file to check; empty means $KUBECONFIG or ~/.kube/config
api_timeout_s: float = 2.0  # seconds to wait for the Kubernetes API server (at most 3)
fail_on_error: bool = False  # raise at the end when a check fails (a gate for CI pipelines)

# %% [markdown]
# Parameters are checked first, so a typo stops here with one clear message instead of half-way through.
# `device="auto"` resolves to the accelerator the later chapters will run on.

# %%
# %matplotlib inline
from IPython.display import Markdown, display

from labkit import devices, env, results
from labkit.chapters import exercises
from labkit.errors import LabkitError, check_bool
from labkit.plots.discovery import check_summary_figure

env.validate_check_options(api_timeout_s, kubeconfig or None)
check_bool("fail_on_error", fail_on_error)  # papermill's `-p fail_on_error false` is the string "false"
resolved_device = devices.pick_device(device)
print(f"later chapters will run on: {resolved_device}")

# %% [markdown]
# ### Exercise: how many ranks will the ZeRO chapters start here?
# Chapters 02 and 05 default to `world_size = 0`, automatic: one rank per GPU when there are two or more, otherwise 2
# CPU ranks (partitioning needs two). From what you know of this machine, predict how many ranks they will start,
# write it below and run the check. (The solution cell is collapsed: click its bar to open it.)

# %% tags=["exercise"]
my_auto_ranks = None  # your prediction: the number of ranks world_size=0 starts on this machine

# %% tags=["exercise"]
auto_ranks, auto_device, auto_why = exercises.automatic_ranks_answer()
display(Markdown(exercises.verdict(my_auto_ranks, auto_ranks, name="my_auto_ranks")))

# %% tags=["solution"] jupyter={"source_hidden": true}
display(Markdown(f"{auto_ranks} x {auto_device}: {auto_why}."))

# %% [markdown]
# ## Run the checks
#
# The slowest parts are importing DeepSpeed (a few seconds) and asking the API server for its version (cut off after
# `api_timeout_s`, so a dead cluster cannot hang this notebook).

# %%
report = env.run_checks(kubeconfig=kubeconfig or None, timeout=api_timeout_s)
report

# %% [markdown]
# ## Summary by group
#
# Green is fine, amber is worth reading, red blocks the labs.

# %%
counts = report.counts()
display(check_summary_figure(report))

# %% [markdown]
# ## What to fix
#
# Every warning and failure with its fix, failures first.

# %%
to_fix = sorted((c for c in report if c.status != "pass" and c.fix), key=lambda c: c.status != "fail")
Markdown("\n".join(f"- **{c.status.upper()} · {c.name}**: {c.fix}" for c in to_fix) or "Nothing to fix.")

# %%
for name, value in {"checks": report.to_dicts(), "summary": counts, "device": resolved_device}.items():
    results.record(name, value)

# %% [markdown]
# ## What this run showed

# %%
Markdown(report.verdict(resolved_device))

# %%
if fail_on_error and report.failures:
    raise LabkitError(f"{len(report.failures)} check(s) failed: {', '.join(c.name for c in report.failures)}")

# %% [markdown]
# ## Troubleshooting
#
# The failures a class meets most often at this step (symptom, cause, fix; sources in `docs/instructor.md`):
#
# - **`Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it`**, slow steps,
#   no GPU memory used. *Cause:* a CPU-only torch wheel, no GPU in the container, or `DS_ACCELERATOR` unset where
#   auto-detection fails. *Fix:* the `torch` check above says which build you have; on a GPU machine install the CUDA
#   build and set `DS_ACCELERATOR=cuda` so a missing GPU fails loudly
#   ([DeepSpeed PR#6845](https://github.com/deepspeedai/DeepSpeed/pull/6845)).
# - **`ValueError: invalid literal for int() with base 10: '90a'`** on H100/H200/GH200. *Cause:* images set
#   `TORCH_CUDA_ARCH_LIST=9.0a`, which DeepSpeed's op builder cannot parse. *Fix:* `export TORCH_CUDA_ARCH_LIST=9.0`
#   ([DeepSpeed#7589](https://github.com/deepspeedai/DeepSpeed/issues/7589)).
# - **`CUDA_HOME does not exist, unable to compile CUDA op(s)`** or **`Ninja is required to load C++ extensions`**.
#   *Cause:* a runtime image without nvcc, or no ninja. *Fix:* the labs compile no op (labkit picks torch's AdamW and
#   disables the CPU comm op); for your own jobs use a `-devel` image whose CUDA matches torch
#   ([DeepSpeed#2772](https://github.com/deepspeedai/DeepSpeed/issues/2772)).
# - **`ModuleNotFoundError: No module named 'mpi4py'`** under `mpirun`. *Cause:* DeepSpeed discovers ranks through
#   mpi4py when `RANK` is unset. *Fix:* `make run` installs it; elsewhere `pip install mpi4py` (needs Open MPI's
#   headers: `libopenmpi-dev`).
# - **The Kubernetes checks warn `no kubeconfig`.** Expected on a laptop: chapters 01 and 03 then use the local
#   backend. For a cluster, pass `kubeconfig=` or set `$KUBECONFIG`.
#
# **Docs:** [DeepSpeed getting started](https://www.deepspeed.ai/getting-started/) ·
# [DeepSpeed accelerator setup](https://www.deepspeed.ai/tutorials/accelerator-setup-guide/) ·
# [kubectl set-up](https://kubernetes.io/docs/tasks/tools/).
