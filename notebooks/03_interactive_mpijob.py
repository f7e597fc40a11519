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
#     cell_id_prefix: mpijob
#     test_parameters:
#       backend: local
#       device: cpu
#       name: nb03-test
#       ready_timeout_s: 60.0
#       slots: 1
#       steps: 10
#       workers: 2
# ---

# %% [markdown]
# # 03 · Interactive MPIJob: exec into a launcher and run DeepSpeed
#
# **Objectives.** In this chapter you plan and submit an MPIJob whose launcher idles, exec `deepspeed --hostfile /etc/mpi/hostfile ...` into it, read the hostfile and the ranks' output, and delete the job.
#
# **Prerequisites.** Chapters 00-02; for `backend='kubernetes'` a kubeconfig and the MPI Operator (chapter 01 checks both).
#
# **Time** at the defaults: 21-35 s on an idle 2-core CPU machine and 40-44 s on one H100 (CPU: four runs, two of them on CPUs without AVX-512, 2026-12-06 and 12-07; H100: two runs, 2026-12-06; docs/benchmarks.md).
#
# **Contents:** Check the parameters · The manifest · Step 1: submit and wait · Step 2: the hostfile · Step 3: exec the training · Step 4: edit and exec again · Step 5: delete · What the ranks did · What this run showed · Troubleshooting.
#
# Multi-node DeepSpeed on Kubernetes usually goes through the **MPI Operator**. An `MPIJob` gets *worker* pods (they
# run only `sshd`, holding the GPUs or Gaudi cards) and one *launcher* pod. The operator writes the hostfile
# `/etc/mpi/hostfile` into the launcher, one line per worker: `<job>-worker-<i>.<job>.<namespace>.svc slots=N`.
#
# For hands-on work the launcher runs `sleep infinity`: you **exec into it** and start training yourself, as often as
# you like, with
#
#     deepspeed --hostfile /etc/mpi/hostfile --launcher openmpi ... train.py
#
# DeepSpeed hands the ranks to `mpirun`, which reaches the workers over ssh. A **deadline**
# (`runPolicy.activeDeadlineSeconds`) ends the job even if you forget it, so it cannot hold accelerators overnight.
#
# This chapter does the whole round trip: render the manifest, submit, wait until the launcher is ready, look at the
# hostfile, run a real multi-rank DeepSpeed training through the launcher, and delete the job. With
# `backend="local"` (the default) the same steps run as processes on this machine: the launcher is a real long-lived
# process that enforces the deadline, exec runs commands in the job's environment, and `mpirun` starts the ranks here.
# With `backend="kubernetes"` they go to the cluster in your kubeconfig.

# %% tags=["parameters"]
backend: str = "local"  # where the job runs: local (processes on this machine) or kubernetes (your kubeconfig's cluster)
namespace: str = ""  # empty: the lab's ($LABKIT_NAMESPACE, else workloads; Gaudi jobs: <that>-gaudi); local: a folder
name: str = "deepspeed-interactive"  # job name: lowercase letters, digits and '-', starting with a letter
workers: int = 0  # worker pods, 0 for automatic: one per local GPU, else 2 CPU ranks; 2 pods on kubernetes
slots: int = 1  # ranks per worker: GPUs or HPUs per worker pod on a cluster, CPU ranks locally
device: str = "auto"  # accelerator: auto (what the backend has), cpu, cuda or hpu
image: str = ""  # container image for the pods; empty: the kit's image for the accelerator
deadline_minutes: float = 30.0  # the job is stopped (and its accelerators freed) after this many minutes
train_command: str = ""  # command to exec in the launcher; empty: DeepSpeed's openmpi launcher running labkit's small ZeRO script
steps: int = 30  # optimizer steps of the default training command
ready_timeout_s: float = 300.0  # how long to wait for the launcher and workers to become ready
kubeconfig: str = ""  # kubeconfig file for the kubernetes backend; empty: $KUBECONFIG or ~/.kube/config
http_proxy: str = ""  # kubernetes: HTTP_PROXY for every pod of the job (e.g. http://proxy.corp:3128); empty: none
https_proxy: str = ""  # kubernetes: HTTPS_PROXY for every pod; empty: the same as http_proxy
no_proxy: str = ""  # kubernetes: NO_PROXY additions; the cluster's own names (.svc, .cluster.local) are always added
queue: str = ""  # kubernetes: Kueue LocalQueue to submit to (the job waits, suspended, until admitted); empty: none

# %% [markdown]
# ## Check the parameters
#
# Everything is validated before anything is submitted: a bad name, a deadline under a minute or an unknown device
# stops here with one message naming the parameter and the fix. `device="auto"` picks the accelerator the backend
# actually has.

# %%
# %matplotlib inline
from IPython.display import HTML, Markdown, display

from labkit import results
from labkit.errors import LabkitError
from labkit.chapters.interactive import (
    TrainingProgress,
    check_world_size_prediction,
    closing_note,
    delete_at_exit,
    exec_again,
    hostfile_rows,
    loss_view,
    parse_metrics,
    plan_interactive_job,
    summarize_training,
    world_size_solution,
)

plan = plan_interactive_job(backend=backend, namespace=namespace, name=name, workers=workers, slots=slots,
                            device=device, image=image, deadline_minutes=deadline_minutes,
                            train_command=train_command, steps=steps, ready_timeout_s=ready_timeout_s,
                            kubeconfig=kubeconfig, http_proxy=http_proxy, https_proxy=https_proxy,
                            no_proxy=no_proxy, queue=queue)
print(plan.describe())

# %% [markdown]
# ## The manifest
#
# This is the `MPIJob` the cluster receives (the local backend keeps a copy in its job directory). Note the launcher's
# `sleep infinity`, the workers' `sshd` with a readiness probe (`launcherCreationPolicy: WaitForWorkersReady` starts the
# launcher only when every worker accepts ssh), `slotsPerWorker`, and `activeDeadlineSeconds`. The Hugging Face token is
# a *reference* to a Secret, never a value.

# %%
fields = plan.key_fields()
display(Markdown("| field | value | why it matters |\n|---|---|---|\n"
                 + "\n".join(f"| `{r['field']}` | `{r['value']}` | {r['why']} |" for r in fields)))
display(HTML(plan.manifest_details("MPIJob")))

# %% [markdown]
# ### Exercise: what world size will the ranks report?
# DeepSpeed's openmpi launcher starts one rank per slot of every hostfile line. From the plan above (workers, slots per
# worker), predict the world size each rank will report; the check runs after the training below.

# %% tags=["exercise"]
my_world_size = None  # your prediction: the world size the training ranks report

# %% [markdown]
# ## Step 1: submit and wait
#
# `submit` creates the objects (on a cluster after a server-side dry run); `wait_ready` waits for the launcher and
# every worker (on a cluster it reports image pull errors and unschedulable pods with their events). From here on the
# job **lives across cells**: exec into it as often as you like, and delete it in step 5. If a cell fails or you close
# the notebook, the kernel deletes the job when it exits, and the deadline ends it in any case. Under each step: what
# you would type in a terminal instead. (On a cluster, build and push the images first: `images/README.md`.)

# %%
job = plan.backend.submit(plan.spec)
delete_at_exit(job)
for note in job.notes:  # what the submit left out (on a cluster: RBAC only an admin may grant)
    print("note:", note)
ready = job.wait_ready(timeout=ready_timeout_s)
print(f"ready: {ready.message}; the deadline stops it in {ready.remaining_s / 60:.0f} min\n")
print(plan.equivalents("submit"))
print(plan.equivalents("wait"))

# %% [markdown]
# ## Step 2: what the launcher sees: the hostfile
#
# On a cluster: one line per worker pod, `slots` ranks each. Locally all workers share this machine, so the hostfile
# has one line, `localhost slots=<workers x slots>` (the cluster's lines are kept above it as comments); Open MPI then
# starts every rank here without ssh. The local backend maps the path `/etc/mpi/hostfile` to the job's own hostfile,
# so the same commands work on both backends.

# %%
hostfile = job.run(["cat", job.hostfile_path])
print(hostfile.output)
rows = hostfile_rows(hostfile.output)
display(Markdown("| host | slots |\n|---|---|\n" + "\n".join(f"| `{r['host']}` | {r['slots']} |" for r in rows)))
print(plan.equivalents("hostfile"))

# %% [markdown]
# ## Step 3: exec the training
#
# The command below is what you would type in a shell inside the launcher. Its output streams live; an interrupt
# (the stop button) stops every rank it started.

# %%
print(f"$ {plan.command_line}\n")
progress = TrainingProgress(total_steps=plan.steps if plan.default_command else None)
try:
    training = job.run(plan.train_argv, on_output=progress)
finally:
    progress.close()
print(f"\ntraining exit code: {training.returncode}" + (f"; why: {training.failure}" if training.failure else ""))
print(plan.equivalents("shell"))

# %% [markdown]
# ## Step 4: edit and exec again, while the job lives
#
# Nothing was restarted: the launcher and the workers are still there. Change `again_command` (any command; empty:
# the training again, 5 steps of it, or your own `train_command` as it was) and run the cell as often as you like.

# %%
again_command = ""  # e.g. "python -c 'import torch; print(torch.__version__)'"; empty: the training again
print(exec_again(plan, job, again_command))

# %% [markdown]
# ## Step 5: delete
#
# Deleting stops the launcher, the workers and anything still running in them, and frees their accelerators.

# %%
job.delete()
left_over = [s.name for s in plan.backend.list() if s.name == plan.spec.name]
print(f"job deleted: {not left_over}")
print(plan.equivalents("delete"))

# %% [markdown]
# ## What the ranks did
#
# Each rank trains the same small model on its own shard of data under ZeRO stage 1 (optimizer state partitioned
# across ranks), reporting its loss at every step; at the end the ranks all-reduce `rank + 1`, which must sum to
# `world_size x (world_size + 1) / 2` on every rank.

# %%
metrics = parse_metrics(training.output)
summary = summarize_training(metrics, training.returncode)
view = loss_view(metrics, summary)  # the chart, or why there is none
display(Markdown(view) if isinstance(view, str) else view)

# %%
for key, value in {"backend": plan.backend.name, "accelerator": plan.spec.accelerator, "command": plan.train_argv,
                   "hostfile": rows, "training": summary, "exec_seconds": training.duration_s,
                   "job_deleted": not left_over}.items():
    results.record(key, value)

# %% tags=["exercise"]
display(Markdown(check_world_size_prediction(my_world_size, summary)))

# %% tags=["solution"] jupyter={"source_hidden": true}
display(Markdown(world_size_solution(plan, rows, summary)))

# %% [markdown]
# ## What this run showed

# %%
Markdown(closing_note(plan, rows, training, summary, deleted=not left_over))

# %%
if training.returncode != 0 or (plan.default_command and not summary["allreduce_ok"]):
    raise LabkitError(f"the training command failed: {training.failure or f'exit code {training.returncode}'}")

# %% [markdown]
# ## Troubleshooting
#
# The eight failures most likely in a class of 30 on a shared cluster, in that order, then two more of this chapter:
#
# 1. **`Unable to find hostfile, will proceed with training with local resources only`**: the job "works" on one pod.
#    *Cause:* DeepSpeed's default is `/job/hostfile`; the operator writes `/etc/mpi/hostfile`. *Fix:* pass
#    `--hostfile /etc/mpi/hostfile` and check the world size the ranks print
#    ([DeepSpeedExamples#145](https://github.com/deepspeedai/DeepSpeedExamples/issues/145)).
# 2. **`host=<job>-worker-0 was not reachable via ssh`**, **`Could not resolve hostname`**, or **`ImagePullBackOff`**.
#    *Cause:* workers not ready: thirty image pulls at once, DNS not there yet, or an image never pushed. *Fix:* build
#    and push the images first (`labkit images build-command NAME`; `images/README.md`), pre-pull them, `kubectl wait
#    --for=condition=Ready pod -l training.kubeflow.org/job-name=<job>`, keep `launcherCreationPolicy:
#    WaitForWorkersReady` ([mpi-operator#443](https://github.com/kubeflow/mpi-operator/issues/443),
#    [trainer#2001](https://github.com/kubeflow/trainer/issues/2001)).
# 3. **`errno: 98 - Address already in use`** on port 29500, or `Device already acquired`. *Cause:* ranks of a run
#    stopped with Ctrl-C still run in the long-lived pods. *Fix:* `pkill -f labkit.ranks` in the launcher and the
#    workers, or delete and resubmit; `--master_port` as a stopgap
#    ([DeepSpeed#3916](https://github.com/deepspeedai/DeepSpeed/issues/3916)).
# 4. **Hangs after `Using ... as PyTorch extensions root`, or NCCL timeouts while one rank compiles an op.** *Cause:*
#    DeepSpeed ops JIT-built on every rank (a stale lock, a slow build). *Fix:* prebuild the ops in the image (the
#    kit's labs compile none) ([DeepSpeed#5205](https://github.com/deepspeedai/DeepSpeed/issues/5205)).
# 5. **`posix_fallocate failed: No space left on device`.** *Cause:* a pod's `/dev/shm` is 64 MiB. *Fix:* the kit's
#    manifests mount an in-memory `emptyDir` there ([nccl#525](https://github.com/NVIDIA/nccl/issues/525)).
# 6. **`not enough slots available`**, `invalid device ordinal`, or two ranks on one GPU. *Cause:* `slotsPerWorker`
#    differs from the GPUs per worker. *Fix:* make `slots`, the GPU limit and the GPUs per pod one number
#    ([mpi-operator#558](https://github.com/kubeflow/mpi-operator/issues/558)).
# 7. **A rank OOMKilled (137) under ZeRO-3 or offload**: here the exec's last line says `rank N died (killed by signal
#    9)`, on a cluster mpirun's says `process rank N ... exited on signal 9`. DeepSpeed's own `exits with return code`
#    line shows the last rank's command whichever rank died: do not read the rank from it. *Cause:* host memory: full
#    model loads on every rank, pinned memory counted against the pod's limit. *Fix:* `deepspeed.zero.Init`,
#    `"pin_memory": false`, a larger limit ([DeepSpeed#2676](https://github.com/deepspeedai/DeepSpeed/issues/2676)).
# 8. **GPUs held by idle jobs.** *Cause:* `sleep infinity` launchers left running, workers kept by `cleanPodPolicy`.
#    *Fix:* delete your job when done (step 5); the deadline (`deadline_minutes`) ends it anyway
#    ([mpi-operator#643](https://github.com/kubeflow/mpi-operator/issues/643)).
#
# Also here: **`mpirun has detected an attempt to run as root`** (`--launcher_args "--allow-run-as-root"` or
# `OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1`), and **`HF_TOKEN` or anything you exported missing on
# the ranks** (they start over ssh with a fresh environment: use `~/.deepspeed_env` or the worker pod spec).
#
# **Docs:** [MPI Operator](https://github.com/kubeflow/mpi-operator) ·
# [Kubeflow MPI training](https://www.kubeflow.org/docs/components/trainer/legacy-v1/user-guides/mpi/) ·
# [DeepSpeed multi-node launching](https://www.deepspeed.ai/getting-started/#resource-configuration-multi-node).
