"""ZeRO stages on real hardware: per-rank model-state bytes measured vs predicted, peak allocated, step time.

    python bench/zero_memory.py                       # GPU defaults: 335M params, bf16, all visible GPUs
    python bench/zero_memory.py --params 4M --device cpu --steps 3      # the same on a CPU (smoke test)

One DeepSpeed launch runs every configuration (stages 0-3 and ZeRO-2 + CPU optimizer offload). Prints a table last and
writes the full report (per rank, per phase) as JSON. Results go to docs/benchmarks.md ("ZeRO stages").
Needs torch + deepspeed only (no kubernetes/papermill): runs on the GPU benchmark machine with the repo on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from labkit import devices, memory, zero  # noqa: E402
from labkit.chapters.zero_stages import conclusions  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="335M", help="model size (>= 300M for the recorded GPU benchmark)")
    ap.add_argument("--world-size", type=int, default=0, help="ranks (0: automatic, as labkit zero: all visible GPUs)")
    ap.add_argument("--stages", default="0,1,2,3,2+opt", help="stage variants, e.g. 0,1,2,3,2+opt,3+opt")
    ap.add_argument("--dtype", default="bf16", choices=zero.DTYPES)
    ap.add_argument("--device", default="auto", choices=devices.DEVICE_CHOICES)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--tolerance", type=float, default=0.05, help="allowed |measured-predicted|/predicted")
    ap.add_argument("--out", default="zero_memory.json", help="where the full JSON report goes")
    ap.add_argument("--log", default=None, help="launcher output log file")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds before all ranks are stopped")
    args = ap.parse_args(argv)

    options = {"dtype": args.dtype, "device": args.device, "steps": args.steps, "warmup": args.warmup}
    plan = zero.make_plan(args.params, args.world_size, args.stages, **options, timeout_s=args.timeout)
    plan.memory_summary = plan.device == "cuda"
    print(
        f"plan: {plan.params:,} params (hidden {plan.hidden} x {plan.layers} blocks), {plan.dtype}, "
        f"{plan.world_size} x {plan.device} ({plan.why}), micro-batch {plan.micro_batch} x {plan.seq}, "
        f"configs {[v.name for v in plan.variants]}",
        flush=True,
    )

    def progress(name, step, done, total):
        print(f"  [{done}/{total}] ZeRO {name} step {step}", flush=True)

    report = zero.run_plan(plan, progress=progress, log_path=args.log)
    report["machine"] = {"platform": platform.platform(), "python": sys.version.split()[0]}
    try:
        import deepspeed
        import torch

        report["machine"].update(
            torch=torch.__version__,
            deepspeed=deepspeed.__version__,
            cuda=torch.version.cuda,
            gpu=report.get("device_name"),
        )
    except ImportError:
        pass
    Path(args.out).write_text(json.dumps(report, indent=1))

    # Table: per config, rank 0 (all ranks are checked against the tolerance).
    print(f"\nmachine: {report['machine']}")
    print(f"command: {' '.join(report['command'] or [])}")
    head = (
        f"{'config':<26} {'measured GB':>11} {'predicted GB':>12} {'err':>7} {'paper GB':>9} {'alloc@step GB':>13} "
        f"{'pred dev@step':>13} {'peak GB':>8} {'step ms':>8}"
    )
    print(head)
    print("-" * len(head))
    ok = True
    for c in report["configs"]:
        m = c["measured_total"][0]
        p = c["predicted_deepspeed_total"]
        alloc = c["allocated_after_step"][0]
        pred_dev_step = sum(c["predicted_deepspeed_after_step"]["device"].values())
        peak = c["peak_above_start"][0]
        ok &= c["rel_error_deepspeed"] <= args.tolerance
        fmt = lambda x: f"{x / 1e9:.3f}" if x is not None else "n/a"  # noqa: E731
        print(
            f"{c['label']:<26} {fmt(m):>11} {fmt(p):>12} {c['rel_error_deepspeed'] * 100:6.2f}% "
            f"{fmt(c['predicted_paper_total']):>9} {fmt(alloc):>13} {fmt(pred_dev_step):>13} {fmt(peak):>8} "
            f"{c['step_time_s'] * 1e3:8.1f}"
        )
    print(f"\nall configs within {args.tolerance:.0%} of labkit's DeepSpeed model: {ok}")
    for line in conclusions(report):
        print(" -", line)
    print(
        f"(model states: params, fp32 master, gradients, Adam moments, buffers; "
        f"alloc@step = memory_allocated after a steady step minus before initialize; peak likewise; GB = 1e9 B; "
        f"{memory.format_count(plan.params)} params)"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
