"""The accelerate route timed: one `accelerate launch` per ZeRO stage (1-3) of labkit.ranks.accelerate_train.

    python bench/accelerate_route.py                  # device auto: every GPU (1 on the H200 machine), else 2 CPU ranks
    python bench/accelerate_route.py --stages 3 --steps 60
    python bench/accelerate_route.py --stages 2,3 --offload-optimizer cpu --offload-param cpu   # offload (param: 3)

Prints a Markdown table last (wall time with start-up, prepare() time, median step, final loss, per-rank bytes counted
in the engine). Results go to docs/benchmarks.md ("The accelerate route"). Needs torch, deepspeed, accelerate and
transformers with the repo on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from labkit import accelerate_route as route  # noqa: E402
from labkit import devices  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stages", default="1,2,3", help="ZeRO stages, comma-separated")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--device", default="auto", choices=devices.DEVICE_CHOICES)
    ap.add_argument("--mixed-precision", default="bf16", choices=route.MIXED_PRECISIONS)
    ap.add_argument("--offload-optimizer", default="none", choices=route.OFFLOAD_DEVICES)
    ap.add_argument("--offload-param", default="none", choices=route.OFFLOAD_DEVICES, help="ZeRO-3 only")
    args = ap.parse_args(argv)
    processes, device, why = devices.auto_ranks(args.device)
    print(f"{processes} x {device} ({why})")
    rows = ["| stage | offload | wall s | prepare s | median step ms | last loss | model states B/rank "
            "| buffers B/rank |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for stage in map(int, args.stages.split(",")):
        param = args.offload_param if stage == 3 else "none"
        offload = {"offload_optimizer": args.offload_optimizer, "offload_param": param}
        config = route.AccelerateConfig(stage, processes, args.mixed_precision, **offload)
        with tempfile.TemporaryDirectory() as run_dir:
            report = route.run_training(route.TrainPlan(config, run_dir, device=device, steps=args.steps))
        r = report["ranks"][0]
        counted = r["memory"]["step"]["device"]
        states = sum(v for k, v in counted.items() if k != "buffers")
        step_ms = statistics.median(r["step_times_s"][1:] or r["step_times_s"]) * 1e3
        where = ", ".join(f"{k.split('_')[1]} {v}" for k, v in offload.items() if v != "none") or "none"
        rows.append(f"| {stage} | {where} | {report['wall_s']:.1f} | {r['init_s']:.1f} | {step_ms:.0f} "
                    f"| {r['losses'][-1]:.3f} | {states:,} | {counted['buffers']:,} |")  # fmt: skip
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
