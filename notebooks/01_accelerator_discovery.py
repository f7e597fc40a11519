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
#     cell_id_prefix: disc
#     test_parameters:
#       api_timeout_s: 5.0
# ---

# %% [markdown]
# # 01 · Accelerator discovery
#
# **Objectives.** In this chapter you list the accelerators of this machine and, when a kubeconfig is set, of the cluster's nodes, and see which device the later chapters will use.
#
# **Prerequisites.** Chapter 00.
#
# **Time** at the defaults: 3-6 s on an idle 2-core CPU machine and 5 s on one H100 (CPU: four runs, two of them on CPUs without AVX-512, 2026-12-06 and 12-07; H100: two runs, 2026-12-06; docs/benchmarks.md).
#
# **Contents:** This machine · The cluster · Filter by accelerator kind · What this run showed.
#
# DeepSpeed starts one rank per accelerator, so the first question of any run is *what is there?* This chapter lists
#
# * the devices of **this machine**: NVIDIA GPUs (through NVML, falling back to torch and then `nvidia-smi`), Intel Gaudi
#   HPUs (through `hl-smi`, falling back to `habana_frameworks`) and the CPU (usable cores, memory, NUMA nodes);
# * the nodes of **the cluster** in your kubeconfig, when there is one: their allocatable `nvidia.com/gpu`,
#   `habana.ai/gaudi` and `amd.com/gpu`, the product named by their labels, their `hugepages-2Mi` (Gaudi pods need them),
#   and whether the MPIJob (`kubeflow.org/v2beta1`) and TrainJob CRDs the kit's jobs use are installed.
#
# Nothing here changes the machine or the cluster: it only reads.

# %% tags=["parameters"]
device: str = "auto"  # device later chapters will use: auto (cuda, else hpu, else cpu), cpu, cuda or hpu
cluster: str = "auto"  # query Kubernetes: auto (when a kubeconfig exists), on (required) or off
kubeconfig: str = ""  # kubeconfig file; empty means $KUBECONFIG, ~/.kube/config or the pod's service account
context: str = ""  # kubeconfig context; empty means its current-context
api_timeout_s: float = 10.0  # seconds to wait for each Kubernetes API request

# %% [markdown]
# The parameters are checked before anything is queried: `cluster="on"` without a kubeconfig stops here with
# the fix, while `cluster="auto"` simply skips the cluster on a laptop.

# %%
# %matplotlib inline
from IPython.display import Markdown, display

from labkit import devices, results
from labkit import cluster as kube
from labkit.chapters import exercises
from labkit.plots.discovery import device_memory_figure, filtered_tables_html, node_accelerators_figure
from labkit.tabular import format_bytes

query_cluster = kube.resolve_cluster_mode(cluster, kubeconfig or None, context or None, api_timeout_s)
resolved_device = devices.pick_device(device)
print(f"device for later chapters: {resolved_device}; query the cluster: {query_cluster}")

# %% [markdown]
# ## This machine
#
# One row per device, memory as in use / total in decimal units (1 GB = 10^9 bytes); the chart below draws the same
# bytes in GiB (2^30 bytes, 7% more each), so its numbers are smaller. The notes say which source answered for each
# kind and why the others were skipped: on a laptop they explain that there is no NVML library, no `nvidia-smi` and
# no Gaudi software.

# %%
local = devices.discover()
local

# %%
display(device_memory_figure(local.devices))

# %% [markdown]
# ### Exercise: the largest model this machine can train without ZeRO
# Plain data parallelism keeps 16 bytes of model states per parameter on every device (bf16 weights and gradients, an
# fp32 master copy and Adam's two fp32 moments: chapter 02 measures them). Read the total memory of the accelerator
# (GPU or HPU) with the most of it in the table above, not the `cpu` row, whose RAM is often larger (on a machine
# without an accelerator: that RAM), and predict the largest model, in **millions of parameters**, whose model states
# fit in it (activations ignored). Within 10% counts.

# %% tags=["exercise"]
my_max_params_m = None  # your prediction, in millions of parameters (e.g. 8000 for 8B)

# %% tags=["exercise"]
largest = exercises.largest_device(local.devices)  # of those whose memory is known
max_params_m = exercises.trainable_params_answer(largest.mem_total) / 1e6
display(Markdown(exercises.verdict(my_max_params_m, round(max_params_m), name="my_max_params_m", unit=" M",
                                   rel_tol=0.10)))

# %% tags=["solution"] jupyter={"source_hidden": true}
display(Markdown(f"{largest.name}: {format_bytes(largest.mem_total)} / 16 bytes per parameter = "
                 f"{max_params_m:,.0f} M parameters; ZeRO-3 on N devices divides the 16 by N (chapter 02)."))

# %% [markdown]
# ## The cluster
#
# Allocatable is what the scheduler can still hand out (capacity minus what the node reserves or marks unhealthy): a GPU
# node showing `6/8` has two devices its device plugin reports as unhealthy. A cordoned or not-ready node takes no new
# pods.

# %%
if query_cluster:
    inventory = kube.discover_cluster(kubeconfig or None, context or None, timeout=api_timeout_s)
else:
    why = "cluster='off'" if cluster.strip().lower() == "off" else kube.NO_CLUSTER_MESSAGE
    inventory = kube.ClusterReport(configured=False, error=f"not queried: {why}")
inventory

# %%
if inventory.nodes:
    display(node_accelerators_figure(inventory.nodes))
else:
    print("no node chart: " + ("the cluster was not queried (above)" if not query_cluster else
                               inventory.error or "the cluster has no nodes"))

# %% [markdown]
# ## Filter by accelerator kind
#
# An optional widget over the same records (in JupyterLab pick a kind; headless runs show `all`). `cuda` covers NVIDIA
# and AMD nodes (ROCm builds of torch also use the `cuda` device), `hpu` covers Gaudi.

# %%
kinds = ["all"] + [k for k in devices.DEVICE_KINDS
                   if devices.filter_by_kind(local.devices, k) or devices.filter_by_kind(inventory.nodes, k)]
try:
    import ipywidgets as widgets

    from labkit import controls

    display(controls.live_html(lambda kind: filtered_tables_html(local.devices, inventory.nodes, kind),
                               kind=widgets.Dropdown(options=kinds, value="all")))
except ImportError:
    print("ipywidgets is not installed: the tables above already show every kind")

# %%
for name, value in {"devices": [d.to_dict() for d in local.devices], "device": resolved_device,
                    "cluster": inventory.to_dict()}.items():
    results.record(name, value)

# %% [markdown]
# ## What this run showed

# %%
Markdown(f"{local.summary()}; later chapters will run on **{resolved_device}**. {inventory.summary()}")

# %% [markdown]
# ## Troubleshooting
#
# - **`nvidia-smi` in a launcher pod shows every GPU of the node.** *Cause:* CUDA images set
#   `NVIDIA_VISIBLE_DEVICES=all` and the pod requests no GPU. *Fix:* set `NVIDIA_VISIBLE_DEVICES=none` on pods that
#   should hold none ([k8s-device-plugin#61](https://github.com/NVIDIA/k8s-device-plugin/issues/61)).
# - **A node shows `6/8` GPUs.** *Cause:* the device plugin marks two devices unhealthy (allocatable < capacity).
#   *Fix:* tell the cluster's operators; schedule pods that fit the allocatable count.
# - **`Forbidden: nodes is forbidden`** in the cluster section. *Cause:* listing nodes needs cluster scope, and the
#   kit's Role (`manifests/base/rbac.yaml`) is namespaced on purpose. *Fix:* ask the cluster's admins for read access
#   to nodes, or run with `cluster="off"`.
# - **`synStatus=20 [Device already acquired]`** on Gaudi. *Cause:* leftover ranks or another container hold the
#   HPU. *Fix:* `hl-smi`, stop the leftovers, request `habana.ai/gaudi` in the pod
#   ([tgi-gaudi#93](https://github.com/huggingface/tgi-gaudi/issues/93)).
#
# **Docs:** [Kubernetes: schedule GPUs](https://kubernetes.io/docs/tasks/manage-gpus/scheduling-gpus/) ·
# [NVIDIA device plugin](https://github.com/NVIDIA/k8s-device-plugin) ·
# [Intel Gaudi on Kubernetes](https://docs.habana.ai/en/latest/Orchestration/Gaudi_Kubernetes/index.html).
