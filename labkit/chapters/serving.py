"""Notebook 07, serving from a DeepSpeed job: the requests the chapter sends (one after another, then concurrently),
their latencies against a single-process reference, the latency figure, the exercise check and the comparison with
the seed's barrier version."""

from __future__ import annotations

import random
import re
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy

from labkit import plots
from labkit.chapters import exercises
from labkit.errors import check_int
from labkit.progress import bar as progress_bar
from labkit.serving import local, models
from labkit.tabular import format_percent


def sample_rows(info: models.ModelInfo, rng: random.Random, most: int = 4) -> list[list]:
    """One request's rows: 1..most rows of the model's input (floats, or token ids of one length)."""
    n, length = rng.randint(1, most), rng.randint(2, 12)
    if info.kind == "float":
        return [[round(rng.uniform(-3, 3), 4) for _ in range(info.features)] for _ in range(n)]
    return [[rng.randrange(info.vocab) for _ in range(length)] for _ in range(n)]


def check_load(requests: int, concurrency: int) -> None:
    check_int("requests", requests, 2, "send at least 2 requests (half one after another, half concurrently)")
    check_int("concurrency", concurrency, 1, "pass 1 or more clients sending at once", maximum=64)


def send_requests(
    client: local.HttpClient,
    model: str,
    requests: int,
    concurrency: int,
    *,
    max_batch: int = 4,
    seed: int = 0,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Half the requests one after another, the other half from `concurrency` clients at once, after one untimed
    warm-up request; each of 1..4 rows, at most the service's max_batch. One record per request: rows, outputs,
    latency_ms, concurrent, and the largest difference from the single-process reference."""
    check_load(requests, concurrency)
    info, rng, most = models.model_info(model), random.Random(seed), min(4, max_batch)
    batches = [sample_rows(info, rng, most) for _ in range(requests)]
    bar = progress_bar(requests, desc="requests", unit="req", disable=not progress)

    def one(item: tuple[int, list[list]]) -> dict[str, Any]:
        i, rows = item
        start = time.perf_counter()
        outputs = client.predict(rows)
        record = {"i": i, "rows": len(rows), "latency_ms": (time.perf_counter() - start) * 1e3, "outputs": outputs}
        bar.update(1)
        return record | {"concurrent": i >= requests // 2, "input": rows}

    # One untimed request first: the first answer pays one-time costs (CUDA kernels loaded, allocator grown: 73 ms
    # against 1.4 ms on an H100), which would count as the sequential phase's p99 and halve its requests/s.
    client.predict(sample_rows(info, random.Random(seed + 1), most))
    half = requests // 2
    records = [one(item) for item in enumerate(batches[:half])]
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        records += list(pool.map(one, enumerate(batches[half:], start=half)))
    wall = time.perf_counter() - started
    bar.close()
    for r in records:
        want = models.reference_outputs(model, r["input"])
        r["max_diff"] = max(abs(a - b) for got, ref in zip(r["outputs"], want) for a, b in zip(got, ref))
        r["concurrent_wall_s"] = wall
    return records


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation between the nearest ranks."""
    return float(numpy.percentile(values, q))


def latency_rows(records: list[dict]) -> list[dict[str, Any]]:
    """Per phase (one after another | concurrent): requests, p50, p99, mean (ms) and requests/s."""
    rows = []
    for concurrent, label in ((False, "one after another"), (True, "concurrent")):
        part = [r for r in records if r["concurrent"] == concurrent]
        if not part:
            continue
        ms = [r["latency_ms"] for r in part]
        wall = part[0]["concurrent_wall_s"] if concurrent else sum(ms) / 1e3
        row = {"phase": label, "requests": len(part), "p50_ms": round(percentile(ms, 50), 2)}
        row |= {"p99_ms": round(percentile(ms, 99), 2), "mean_ms": round(statistics.fmean(ms), 2)}
        rows.append(row | {"requests_per_s": round(len(part) / wall, 1)})
    return rows


def latency_note(rows: list[dict[str, Any]], concurrency: int) -> str:
    """What concurrency did in this run, from latency_rows: the wait it added and what became of requests/s."""
    if len(rows) < 2:
        return "Only one phase ran: nothing to compare."
    seq, conc = rows[0], rows[-1]
    wait, rate = conc["p50_ms"] / seq["p50_ms"], conc["requests_per_s"] / seq["requests_per_s"]
    text = (f"With {concurrency} clients at once the median request took {conc['p50_ms']} ms against "
            f"{seq['p50_ms']} ms one after another ({wait:.1f}x), and the service answered {conc['requests_per_s']} "
            f"requests/s against {seq['requests_per_s']} ({rate:.1f}x)")  # fmt: skip
    if rate > 1.25:
        return text + (
            ": the HTTP work around each request (parsing, checks, the reply) overlapped another request's collective "
            "step, while the steps themselves still ran one at a time."
        )
    if rate < 0.8:
        return text + ": the clients competed with the ranks for this machine's cores, so the service answered fewer."
    return text + ", about the same: the collective steps dominate and run one at a time; concurrency added waiting."


def closing_lines(served: dict, latency: list[dict[str, Any]], concurrency: int, failure: str = "") -> list[str]:
    """The chapter's closing bullets from this run: `served` is what the notebook records as "serving" (model, mode,
    world_size, device, requests, max_diff, bad_status, health_after_bad, exit_code, ranks); `failure` the
    service's one line when the launcher did not exit 0."""
    steps, seq, conc = [r["steps"] for r in served["ranks"]], latency[0], latency[-1]
    same = "the same count on every rank" if len(set(steps)) == 1 else f"NOT equal: {steps}"
    healthy = "stayed healthy" if served["health_after_bad"] == 200 else "was NOT healthy after it"
    ended = " (every rank exited 0)" if served["exit_code"] == 0 else f": {failure or 'see the launcher output'}"
    return [
        f"{served['world_size']} {served['device']} rank(s) served `{served['model']}` ({served['mode']}); every rank "
        f"took part in all {max(steps)} collective steps ({same}), each holding {served['ranks'][0]['params']:,} "
        "parameters.",
        f"{served['requests']} answers matched one process's to within {served['max_diff']:.1e}.",
        f"One after another: p50 {seq['p50_ms']} ms, p99 {seq['p99_ms']} ms ({seq['requests_per_s']} requests/s); "
        f"{concurrency} clients at once: p50 {conc['p50_ms']} ms, p99 {conc['p99_ms']} ms "
        f"({conc['requests_per_s']} requests/s).",
        f"A malformed request got HTTP {served['bad_status']} from rank 0 and the service {healthy} (deep health "
        f"check: HTTP {served['health_after_bad']}).",
        f"`POST /shutdown` stopped every rank: the launcher's exit code was {served['exit_code']}{ended}.",
    ]


def latency_figure(records: list[dict], title: str):
    """Histogram of request latencies, one colour per phase, p50 and p99 marked."""
    every = [r["latency_ms"] for r in records]
    phases = (("one after another", False, "tab:blue"), ("concurrent", True, "tab:orange"))
    parts = {label: [r["latency_ms"] for r in records if r["concurrent"] == c] for label, c, _ in phases}
    medians = "; ".join(f"{label} p50 {percentile(ms, 50):.2f} ms" for label, ms in parts.items() if ms)
    alt = (f"Histogram: {title}, {len(records)} requests; {medians}; all: p50 {percentile(every, 50):.2f} ms, "
           f"p99 {percentile(every, 99):.2f} ms")  # fmt: skip
    fig = plots.figure(7.5, 3.6, alt)
    ax = fig.add_subplot()
    bins = max(8, min(30, len(records) // 2))
    for label, _, colour in phases:
        ax.hist(parts[label], bins=bins, range=(0, max(every) * 1.05), alpha=0.6, label=label, color=colour)
    for q, style in ((50, "--"), (99, ":")):
        ax.axvline(percentile(every, q), color="black", linestyle=style, linewidth=1, label=f"p{q} (all)")
    ax.set(xlabel="latency (ms)", ylabel="requests", title=title)
    ax.legend()
    return fig


def layer_rows(model: str) -> list[dict]:
    """The served model's layers as the exercise shows them: sizes and what AutoTP does with each (not per rank)."""
    return [{"layer": r["layer"], "type": r["type"], "tensors": r["shapes"], "parameters": r["parameters"],
             "under mode='tp'": models.SPLITS[r["split"]]} for r in models.layers(model)]  # fmt: skip


def params_question(model: str, mode: str, ranks: int) -> str:
    """The exercise's question for this run: its model, mode and rank count (a 1-GPU run has one rank, not two)."""
    line = f'**This run:** model `{model}`, `mode="{mode}"`, over **{ranks}** rank(s): how many parameters per rank?'
    return line + " The table above lists this model's layers, their tensors and what tensor parallelism splits."


def check_params_prediction(ranks: list[dict], predicted: int | None) -> str:
    """The exercise: the learner's parameter count per rank against what every rank reported."""
    then = "(parameters per rank; the solution cell says why)"
    return exercises.verdict(predicted, ranks[0]["params"], name="my_params_per_rank", then=then)


def params_explanation(model: str, mode: str, ranks: list[dict]) -> str:
    """Why each rank holds what it reported (the solution of the exercise), from the served model's own layers."""
    rows = models.layers(model)
    whole = sum(r["parameters"] for r in rows)
    n, held = len(ranks), ranks[0]["params"]
    if mode == "replicas" or n == 1:
        return f"Every rank holds the whole model, {whole:,} parameters: nothing is split ({mode}, {n} rank(s))."

    def named(split: str) -> str:  # each block's layer once: blocks.0.mlp.up and blocks.1.mlp.up read blocks.*.mlp.up
        names = dict.fromkeys(re.sub(r"\.\d+\.", ".*.", r["layer"]) for r in rows if r["split"] == split)
        return ", ".join(f"`{name}`" for name in names)

    rest = f", and keeps the rest whole on every rank ({named('whole')})" if named("whole") else ""
    return (
        f"The whole model has {whole:,} parameters. Tensor parallelism over {n} ranks splits the column-parallel "
        f"layers ({named('columns')}: weight and bias) and the row-parallel ones ({named('rows')}: the weight; the "
        f"bias is added once, after the all-reduce) {n} ways{rest}: {held:,} per rank, "
        f"{format_percent(held / whole)} of the model (the layers' arithmetic gives "
        f"{models.params_per_rank(model, n):,})."
    )


def seed_comparison(health: dict, config, records: list[dict], bad_status: int) -> list[dict[str, str]]:
    """The seed's barrier version against this run, row by row, in this run's numbers."""
    n, steps = health["world_size"], [r["steps"] for r in health["ranks"]]
    whole = sum(p.numel() for p in models.build(config.model)[0].parameters())
    same = "the same on every rank" if len(set(steps)) == 1 else f"NOT the same: {steps}"
    lost = f"503 within {config.step_timeout_s:g} s of a stuck step (at once for a failed one), then exit code 1"
    worst = max(r["max_diff"] for r in records)
    rows = [
        ("ranks in each forward pass", f"1 of {n}: the others wait in dist.barrier() for ever" if n > 1 else "1 of 1",
         f"{n} of {n}: {steps[0]} collective steps, {same}"),
        ("parameters on each rank", f"{whole:,} on rank 0" + (", the others idle" if n > 1 else ""),
         f"{health['ranks'][0]['params']:,} ({config.mode})"),
        ("a bad request", "reaches the model (a shape error: HTTP 500 at best)",
         f"HTTP {bad_status} on rank 0, no rank disturbed"),
        ("a dead rank", "unnoticed (rank 0 never talks to it) or a hang in the next collective",
         f"a heartbeat every {config.heartbeat_s:g} s; {lost}"),
        ("stop", "kill: the barrier never returns", "POST /shutdown or SIGTERM: every rank exits 0"),
        ("answers", "-", f"{len(records)} requests, largest difference from one process {worst:.1e}"),
    ]  # fmt: skip
    return [{"question": q, "seed (barrier)": seed, "this service": ours} for q, seed, ours in rows]
