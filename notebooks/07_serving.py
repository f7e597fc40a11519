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
#     cell_id_prefix: serve
#     test_parameters:
#       requests: 20
#       concurrency: 4
# ---

# %% [markdown]
# # 07 · Serving from a DeepSpeed job: every rank in every forward pass
#
# **Objectives.** In this chapter you serve a model from a DeepSpeed job the right way: every rank holds its part of the model (`deepspeed.init_inference` with tensor parallelism) and joins every forward pass, rank 0 answers HTTP; you send requests (some concurrently), read their latencies, see a bad request refused with 422 and stop every rank cleanly.
#
# **Prerequisites.** Chapters 00-02; a little HTTP (a POST with a JSON body).
#
# **Time** at the defaults: 13-22 s on an idle 2-core CPU machine and 20-24 s on one H100 (CPU: four runs, two of them on CPUs without AVX-512, 2026-12-06 and 12-07; H100: two runs, 2026-12-06; docs/benchmarks.md).
#
# **Contents:** What the seed gets wrong · Check the inputs · Start, ask, stop · Were the answers right? · Latency · How much of the model does a rank hold? · The seed's barrier version against this run · What this run showed.
#
# ## What the seed gets wrong
# One of the kit's seeds serves a model from a DeepSpeed job like this: FastAPI on rank 0, and every other rank calls
# `dist.barrier()` for ever. It answers requests, so it looks fine, but:
#
# - the other ranks never compute: they cannot join a **tensor-parallel** forward pass, so the model must fit on rank 0
#   alone and the job's other GPUs idle;
# - rank 0 never talks to them again: a **dead rank** goes unnoticed (or, once anything collective runs, hangs the
#   service for ever, since a barrier has no timeout);
# - `uvicorn.run` sits under `if __name__ == "__main__"` inside the rank-0 branch: started as a module it never serves;
# - nothing stops it but a kill: the barrier never returns.
#
# `labkit serve` (and this chapter) do it differently: rank 0 checks each request **before** anything is broadcast
# (bad JSON, shape, type, NaN, batch too large: HTTP 422, the other ranks never see it), then sends it through **one**
# single-worker executor (two broadcasts in flight at once would pair one request's header with another's payload),
# every rank computes, rank 0 replies. A heartbeat pings every rank when idle, a watchdog answers 503 and ends the job
# when a rank is lost, and `POST /shutdown` or SIGTERM stops every rank with exit code 0.

# %% tags=["parameters"]
world_size: int = 0  # ranks; 0 for automatic: one per GPU, else 2 CPU ranks
device: str = "auto"  # where ranks run: auto (cuda if present, else cpu) | cpu | cuda
model: str = "regressor"  # regressor (the seed's shape: 10 floats in, 1 out) | transformer (token ids in, logits out)
mode: str = "tp"  # tp: split layers over every rank | replicas: a whole copy per rank, each computes a share of the rows
requests: int = 60  # requests to send: half one after another, half concurrently
concurrency: int = 4  # clients sending at once in the concurrent half
max_batch: int = 16  # most rows per request the service accepts (more: HTTP 422)

# %% [markdown]
# ## Check the inputs
# Every parameter is checked before any rank starts: a mistake (a world size the model cannot be split over, a busy
# port, an unknown mode) stops here with one message naming it and the fix.

# %%
# %matplotlib inline
from IPython.display import HTML, Markdown, display

from labkit import results, tabular
from labkit.chapters import serving as chapter
from labkit.serving import local

config, ranks, why = local.plan(world_size, device, model=model, mode=mode, max_batch=max_batch)
chapter.check_load(requests, concurrency)
service = local.LocalService(config, ranks)
print(tabular.wrapped(f"{ranks} x {config.device} rank(s) ({why}); model {model}: {config.info.about}; mode {mode}"))
print("launch:", tabular.short_paths(" ".join(service.command)))

# %% [markdown]
# ## Start, ask, stop
# One cell, so that every rank is stopped in `finally` whatever happens (an error, or you pressing stop): start the
# ranks, wait until rank 0 answers `/healthz`, ask every rank to answer a ping (`/healthz?deep=1`), send the requests,
# send one bad request, and shut down with `POST /shutdown`.

# %%
try:
    service.start()
    ready = service.wait_ready(timeout=300)
    before = service.client.healthz(deep=True)[1]
    records = chapter.send_requests(service.client, model, requests, concurrency, max_batch=max_batch)
    bad_status, bad_answer = service.client.request("POST", "/predict", {"inputs": [[1.0, 2.0, 3.0]]})
    health_status, health = service.client.healthz(deep=True)
finally:  # every rank leaves its loop (the launcher's 0: every rank exited 0); then nothing may be left running
    exit_code = service.close()
print(f"{len(records)} answers; the bad request got HTTP {bad_status}: {bad_answer['detail']}")
print(f"after it: /healthz?deep=1 -> HTTP {health_status}, {health['ranks_answered']} of {ranks} ranks answered")
print(f"shutdown: the launcher exited with code {exit_code}" + (f" ({service.failure()})" if exit_code else ""))

# %% [markdown]
# ## Were the answers right?
# Each answer is compared with what one process computes with the whole model (the same seeded weights). Split layers
# add their partial sums in a different order, so tiny float differences (around 1e-7) are expected; anything larger
# would be a bug.

# %%
worst = max(r["max_diff"] for r in records)
served = {"model": model, "mode": mode, "world_size": ranks, "device": config.device, "requests": len(records),
          "max_diff": worst, "bad_status": bad_status, "health_after_bad": health_status, "exit_code": exit_code,
          "ranks": health["ranks"]}
results.record("serving", served)
HTML(tabular.html_table([{"request": r["i"], "rows": r["rows"], "concurrent": r["concurrent"],
                          "first output": f"{r['outputs'][0][0]:.5f}", "largest difference": f"{r['max_diff']:.1e}"}
                         for r in records[:: max(1, len(records) // 8)]],
                        ["request", "rows", "concurrent", "first output", "largest difference"], status_column=None))

# %% [markdown]
# ## Latency
# Every request's time from send to answer, after one untimed warm-up request (the first answer pays one-time costs
# such as loading GPU kernels). Rank 0 runs the collective steps one at a time in a single executor (that keeps the
# broadcasts in order), so concurrent requests wait their turn; only the HTTP work around each step can overlap. Does
# concurrency then raise the requests per second, or only the waiting? The sentence under the table says what this
# run measured.

# %%
latency = chapter.latency_rows(records)
results.record("latency", latency)
display(chapter.latency_figure(records, f"{model}, {mode}, {ranks} x {config.device}: request latency"))
display(HTML(tabular.html_table(latency, list(latency[0]), status_column=None)))
Markdown(chapter.latency_note(latency, concurrency))

# %% [markdown]
# ## How much of the model does a rank hold?
# The deep health check asked every rank for its number of parameters and of collective steps.
#
# ### Exercise: predict before you look
# The next cell lists the served model's layers: their tensors, their parameters and what AutoTP does with each under
# `mode="tp"` over N ranks. A column-parallel Linear has its weight and bias split N ways; a row-parallel one its
# weight only (its bias is added once, after the all-reduce); the rest (embeddings, LayerNorms, the transformer's
# output head) stays whole on every rank. The regressor, `Linear(10, 256) -> ReLU -> Linear(256, 1)`, has one of each
# Linear. With `mode="replicas"`, or on one rank, nothing is split. How many parameters does each rank of this run
# (the cell says its model, mode and ranks) hold? Write it below; the cell after checks it against what the ranks
# reported. (The solution cell is collapsed: click its bar to open it.)

# %%
layers = chapter.layer_rows(model)
display(HTML(tabular.html_table(layers, list(layers[0]), status_column=None)))
display(Markdown(chapter.params_question(model, mode, ranks)))

# %% tags=["exercise"]
my_params_per_rank = None  # your prediction: parameters per rank, e.g. 1234

# %% tags=["exercise"]
display(Markdown(chapter.check_params_prediction(health["ranks"], my_params_per_rank)))

# %% tags=["solution"] jupyter={"source_hidden": true}
# tp over N ranks: column-parallel layers hold weight/N + bias/N, row-parallel ones weight/N + the whole bias, the rest all
display(Markdown(chapter.params_explanation(model, mode, health["ranks"])))

# %% [markdown]
# ## The seed's barrier version against this run

# %%
comparison = chapter.seed_comparison(health, config, records, bad_status)
HTML(tabular.html_table(comparison, list(comparison[0]), status_column=None))

# %% [markdown]
# ## What this run showed

# %%
lines = chapter.closing_lines(served, latency, concurrency, failure=service.failure() if exit_code else "")
Markdown("\n".join(f"- {line}" for line in lines))

# %% [markdown]
# ## Troubleshooting
#
# - **The service hangs after one rank died** (the seed's version). *Cause:* the other ranks wait in
#   `dist.barrier()` or a broadcast for ever. *Fix:* every rank in every step, with a per-step watchdog: labkit answers
#   503 and ends the job with a non-zero code.
# - **Garbled answers under concurrent requests.** *Cause:* two request handlers broadcasting at once interleave the
#   collective protocol. *Fix:* one single-worker executor for every collective step (what `labkit.serving` does).
# - **`Address already in use`** when starting `labkit serve`. *Cause:* an earlier service still holds the port.
#   *Fix:* `POST /shutdown` to it, or pick another `--port`.
# - **HTTP 422 for a request you think is right.** Rank 0 checks shape, type, NaN and batch size before anything is
#   broadcast; the response body names the field.
# - **In a cluster the Service answers nothing.** *Cause:* with `deepspeed --hostfile`, rank 0 runs on worker 0, not on
#   the launcher. *Fix:* select the worker-0 pod (the kit's rendered Service does) and allow it in the NetworkPolicy.
#
# **Docs:** [DeepSpeed inference](https://www.deepspeed.ai/tutorials/inference-tutorial/) ·
# [FastAPI](https://fastapi.tiangolo.com/) · [uvicorn](https://www.uvicorn.org/) ·
# [Kubernetes Services](https://kubernetes.io/docs/concepts/services-networking/service/).
