"""labkit serve under load: requests/s and p50/p99 latency per model and mode, one request at a time and concurrent.

    python bench/serve_latency.py        # device auto, the automatic world size; writes serve_latency.json
    python bench/serve_latency.py --device cpu --world-size 2 --requests 400
    python bench/serve_latency.py --cases regressor:tp,transformer:tp,regressor:replicas --concurrency 8

Each case starts one service (`labkit.serving.local.LocalService`: the DeepSpeed launcher, every rank in every
forward pass), sends --warmup requests, then --requests requests one after another and --requests from
--concurrency clients at once (one row per request: the latency of a single answer, as the seed served it), checks
every answer against one process's, and stops every rank with POST /shutdown. Start-up time is reported apart.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from labkit.chapters.serving import percentile  # noqa: E402
from labkit.serving import local, models  # noqa: E402


def one_row(info: models.ModelInfo, rng: random.Random) -> list[list]:
    if info.kind == "float":
        return [[rng.uniform(-3, 3) for _ in range(info.features)]]
    return [[rng.randrange(info.vocab) for _ in range(16)]]


def measure(client: local.HttpClient, rows: list[list[list]], concurrency: int) -> dict:
    latencies: list[float] = []

    def send(batch: list[list]) -> list:
        start = time.perf_counter()
        out = client.predict(batch)
        latencies.append((time.perf_counter() - start) * 1e3)
        return out

    start = time.perf_counter()
    if concurrency == 1:
        outputs = [send(b) for b in rows]
    else:
        with ThreadPoolExecutor(concurrency) as pool:
            outputs = list(pool.map(send, rows))
    wall = time.perf_counter() - start
    return {
        "concurrency": concurrency,
        "requests": len(rows),
        "requests_per_s": len(rows) / wall,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "outputs": outputs,
    }


def run_case(model: str, mode: str, args: argparse.Namespace) -> dict:
    config, ranks, why = local.plan(args.world_size, args.device, model=model, mode=mode)
    info, rng = models.model_info(model), random.Random(0)
    started = time.perf_counter()
    with local.LocalService(config, ranks).start() as service:
        service.wait_ready(600)
        ready_s = time.perf_counter() - started
        for _ in range(args.warmup):
            service.client.predict(one_row(info, rng))
        rows = [one_row(info, rng) for _ in range(args.requests)]
        phases = [measure(service.client, rows, 1), measure(service.client, rows, args.concurrency)]
        code = service.shutdown()
    reference = [models.reference_outputs(model, r) for r in rows]
    for phase in phases:
        outs = phase.pop("outputs")
        phase["max_diff"] = max(abs(a - b) for o, w in zip(outs, reference) for a, b in zip(o[0], w[0]))
    return {"model": model, "mode": mode, "ranks": ranks, "device": config.device, "why": why,
            "ready_s": ready_s, "exit_code": code, "phases": phases}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="regressor:tp,regressor:replicas,transformer:tp", help="model:mode,...")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--world-size", type=int, default=0, help="0: automatic (one per GPU, else 2 CPU ranks)")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--json", default="serve_latency.json")
    args = parser.parse_args()
    cases = [tuple(c.split(":")) for c in args.cases.split(",")]
    results = [run_case(model, mode, args) for model, mode in cases]
    report = {"machine": platform.node(), "python": platform.python_version(), "args": vars(args), "cases": results}
    Path(args.json).write_text(json.dumps(report, indent=1))
    print(f"{'model':<12}{'mode':<10}{'ranks':<10}{'clients':>8}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'diff':>10}")
    for r in results:
        for p in r["phases"]:
            ranks = f"{r['ranks']}x{r['device']}"
            print(
                f"{r['model']:<12}{r['mode']:<10}{ranks:<10}{p['concurrency']:>8}{p['requests_per_s']:>9.1f}"
                f"{p['p50_ms']:>9.2f}{p['p99_ms']:>9.2f}{p['max_diff']:>10.1e}"
            )
    print("ready after (s):", ", ".join(f"{r['model']}:{r['mode']} {r['ready_s']:.1f}" for r in results))
    print("exit codes:", [r["exit_code"] for r in results], f"(report: {args.json})")
    return 0 if all(r["exit_code"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
