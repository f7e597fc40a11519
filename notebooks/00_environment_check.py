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
# **Time** at the defaults: about 9 s on a 2-core CPU machine and 9.9 s on one H200 (measured: docs/benchmarks.md).
#
# **Contents:** Run the checks · Summary by group · What to fix · What this run showed.
#
# Before anything trains, find out what this machine can do. This chapter runs the same checks as `labkit check`:
# Python, the torch build (CPU, CUDA or Gaudi), NCCL, DeepSpeed and which of its C++/CUDA ops can be compiled here
# (in the spirit of `ds_report`), the notebook tooling, `/dev/shm`, huge pages, the NCCL variables, MPI and the
# Kubernetes configuration.
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
from labkit.errors import LabkitError
from labkit.plots.discovery import check_summary_figure

env.validate_check_options(api_timeout_s, kubeconfig or None)
resolved_device = devices.pick_device(device)
print(f"later chapters will run on: {resolved_device}")

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
by_name = {c.name: c for c in report}
ready = not report.failures
Markdown(
    f"This machine **{'is ready for the labs' if ready else 'cannot run the labs yet'}**: "
    f"{counts['pass']} of {len(report)} checks passed, {counts['warn']} warned, {counts['fail']} failed. "
    f"torch: {by_name['torch'].detail}; DeepSpeed: {by_name['DeepSpeed'].detail}. "
    f"Later chapters will run on **{resolved_device}**. "
    + (
        f"Fix first: {', '.join(c.name for c in report.failures)}."
        if not ready
        else f"The {counts['warn']} warning(s) name things this machine lacks or could tune; none blocks a CPU run."
    )
)

# %%
if fail_on_error and report.failures:
    raise LabkitError(f"{len(report.failures)} check(s) failed: {', '.join(c.name for c in report.failures)}")
