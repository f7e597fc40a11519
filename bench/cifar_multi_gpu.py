"""CIFAR-10 through labkit's launcher path on N local ranks: one run per ZeRO stage, then a resume from the last
checkpoint. What a notebook with world_size=N does, without the notebook (the GPU machine has no papermill):

    python bench/cifar_multi_gpu.py              # every visible GPU, stages 0-3, writes cifar_multi_gpu.json
    python bench/cifar_multi_gpu.py --device cpu --world-size 2 --train-images 640 --epochs 1    # a CPU rehearsal

Data: a synthetic set in the CIFAR-10 format, written once to --data-dir by the first run and read from disk by every
rank of every run (the same path as real data on a shared volume).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from labkit.chapters import cifar  # noqa: E402
from labkit.devices import pick_device  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--world-size", type=int, default=0, help="0 = every visible GPU")
    parser.add_argument("--stages", default="0,1,2,3")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--train-images", type=int, default=50_000)
    parser.add_argument("--micro-batch", type=int, default=0, help="0 = automatic (1024 on a GPU)")
    parser.add_argument("--data-dir", default="", help="where the synthetic set is written (default: a temp folder)")
    parser.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "cifar_multi_gpu.json"))
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    if not args.world_size:
        import torch

        args.world_size = torch.cuda.device_count() if device == "cuda" else 2
    results = {"settings": vars(args) | {"device": device}, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir or str(Path(tmp) / "data")
        common = dict(
            data_dir=data_dir,
            synthetic=True,
            epochs=args.epochs,
            world_size=args.world_size,
            device=device,
            launcher="deepspeed",
            micro_batch=args.micro_batch,
            max_train=args.train_images,
            synthetic_train=args.train_images,
            synthetic_test=10_000,
            max_test=10_000,
        )
        last = None
        for stage in (int(s) for s in args.stages.split(",")):
            ckpt = str(Path(tmp) / f"stage{stage}")
            plan = cifar.plan(stage=stage, checkpoint_dir=ckpt, **common)
            t = time.perf_counter()
            run = cifar.execute(plan, timeout=540)
            s = run["summary"]
            epochs = [r for r in run["records"] if r["kind"] == "epoch"]
            row = {
                "stage": stage,
                "world_size": s["world_size"],
                "global_batch": s["global_batch"],
                "images_per_s_best": s["images_per_s_best"],
                "images_per_s_first_epoch": s["images_per_s_first_epoch"],
                "epochs_images_per_s": [e["images_per_s"] for e in epochs],
                "final_test_acc": s["final_test_acc"],
                "final_train_loss": s["final_train_loss"],
                "steps": s["step"],
                "wall_s": round(time.perf_counter() - t, 1),
                "command": " ".join(plan.command),
            }
            results["runs"].append(row)
            print(json.dumps(row), flush=True)
            last = (stage, ckpt, s["step"])
        # resume from the last run's final checkpoint: it must load (ZeRO-partitioned state on every rank) and stop
        stage, ckpt, steps = last
        t = time.perf_counter()
        again = cifar.execute(cifar.plan(stage=stage, checkpoint_dir=ckpt, resume=True, **common), timeout=300)[
            "summary"
        ]
        results["resume"] = {
            "stage": stage,
            "resumed_from": again["resumed_from"],
            "step": again["step"],
            "expected_step": steps,
            "ok": again["resumed_from"] == steps == again["step"],
            "wall_s": round(time.perf_counter() - t, 1),
        }
        print(json.dumps(results["resume"]), flush=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"\n{'stage':>5} {'ranks':>5} {'batch':>6} {'images/s':>10} {'test acc':>9}")
    for r in results["runs"]:
        print(
            f"{r['stage']:>5} {r['world_size']:>5} {r['global_batch']:>6} {r['images_per_s_best']:>10,.0f} "
            f"{r['final_test_acc']:>9.3f}"
        )
    print(f"resume from step {results['resume']['expected_step']}: {'ok' if results['resume']['ok'] else 'FAILED'}")
    return 0 if results["resume"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
