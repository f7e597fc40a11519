"""Job backend overheads: what an interactive session costs besides the training itself.

    python bench/jobs_latency.py                    # local backend + the fake API server, writes jobs_latency.json
    python bench/jobs_latency.py --train            # also time the default 2-rank DeepSpeed command (local)

Measures, per backend: submit -> ready, one `exec true` round trip, delete (median of --repeats), and optionally the
default training command's wall time (DeepSpeed's openmpi launcher, 2 CPU ranks, mostly start-up). The Kubernetes
numbers are against tests/fake_apiserver.py on 127.0.0.1: they measure the client, the watch and the exec WebSocket
path, not a real cluster's scheduling or image pulls.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from kit_testing import fake_cluster  # noqa: E402

from labkit.chapters.interactive import training_command  # noqa: E402
from labkit.jobs import get_backend  # noqa: E402
from labkit.manifests import JobSpec  # noqa: E402


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    return time.perf_counter() - start, value


def lifecycle(backend, repeats: int, *, train: bool) -> dict:
    submit_ready, exec_rt, delete = [], [], []
    train_s = None
    for i in range(repeats):
        spec = JobSpec(name=f"bench-{i}", workers=2, slots_per_worker=1)
        t, job = timed(backend.submit, spec)
        t2, _ = timed(job.wait_ready, timeout=120)
        submit_ready.append(t + t2)
        try:
            for _ in range(3):
                t, code = timed(job.exec, ["true"], on_output=None)
                assert code == 0
                exec_rt.append(t)
            if train and i == 0 and backend.name == "local":
                argv = training_command(backend, steps=10)
                train_s, code = timed(job.exec, argv, on_output=None, timeout=900)
                assert code == 0, "training failed"
        finally:
            t, _ = timed(job.delete)
            delete.append(t)
    med = statistics.median
    return {
        "submit_to_ready_s": med(submit_ready),
        "exec_true_s": med(exec_rt),
        "delete_s": med(delete),
        "train_2_ranks_10_steps_s": train_s,
        "repeats": repeats,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--train", action="store_true", help="also time the default DeepSpeed command (local, ~30-100 s)")
    p.add_argument("--out", default="jobs_latency.json")
    args = p.parse_args(argv)
    results = {"machine": {"cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]}}
    with tempfile.TemporaryDirectory(prefix="labkit-bench-jobs-") as tmp:
        results["local"] = lifecycle(get_backend("local", jobs_dir=tmp), args.repeats, train=args.train)
    with fake_cluster(ready_delay=0.0) as (_api, backend):
        results["kubernetes_fake_api"] = lifecycle(backend, args.repeats, train=False)
    Path(args.out).write_text(json.dumps(results, indent=1))
    for backend in ("local", "kubernetes_fake_api"):
        r = results[backend]
        train = f", train {r['train_2_ranks_10_steps_s']:.1f} s" if r["train_2_ranks_10_steps_s"] else ""
        print(
            f"{backend:20} submit->ready {r['submit_to_ready_s']:.2f} s, exec true {r['exec_true_s'] * 1000:.0f} ms, "
            f"delete {r['delete_s']:.2f} s{train}"
        )
    print(f"(load average {results['machine']['load_avg_1m']:.1f} on {results['machine']['cpus']} cores) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
