"""Is a rank that dies without a word named right, and what does watching the ranks cost?

    python bench/dead_rank_naming.py                      # 4 runs per launcher, the killed rank alternating 0 and 1
    python bench/dead_rank_naming.py --runs 10 --load 2   # with 2 busy processes taking the cores meanwhile
    python bench/dead_rank_naming.py --device cuda --world-size 1   # a CUDA rank (NCCL) on a 1-GPU machine

Part 1 kills one of --world-size ranks (2 CPU ranks by default; CUDA ranks need one GPU each, as NCCL refuses two
ranks on one device) (SIGKILL after the rendezvous, tests/rank_scripts/allreduce.py) under each launcher
and counts the one-line reports that name the killed rank and its signal: what `labkit.launch.run` says, and what
DeepSpeed's launcher line alone would have said (the rank labkit read from it before procs.RankExits). Part 2 runs
procs.RankExits over a stand-in launcher with --ranks sleeping ranks for --watch-s seconds and reads its thread's CPU
time. Prints Markdown tables last; results go to docs/benchmarks.md ("A rank that dies without a word").
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from labkit import launch, procs  # noqa: E402
from labkit.errors import LaunchError  # noqa: E402

SCRIPT = Path(__file__).resolve().parent.parent / "tests" / "rank_scripts" / "allreduce.py"
DS_LINE_RANK = re.compile(r"--local_rank=(\d+).*exits with return code")  # what labkit read the rank from before


def kill_runs(launcher: str, runs: int, device: str, world: int) -> tuple[int, int, int, float]:
    """(runs, named right by labkit, named right by DeepSpeed's line, slowest run's seconds)."""
    right = line_right = 0
    slowest = 0.0
    for i in range(runs):
        victim = i % world
        start = time.monotonic()
        spec = launch.LaunchSpec(script=SCRIPT, args=["--kill-rank", str(victim), "--device", device],
                                 world_size=world, launcher=launcher, device=device)  # fmt: skip
        try:
            launch.run(spec, timeout=180)
            message, output = "no failure", ""
        except LaunchError as exc:
            message, output = str(exc), exc.output
        slowest = max(slowest, time.monotonic() - start)
        right += message.startswith(f"rank {victim} died (killed by signal 9)")
        m = DS_LINE_RANK.search(output)
        line_right += bool(m and int(m.group(1)) == victim)
        print(f"{launcher} run {i + 1}: rank {victim} killed -> {message}", flush=True)
    return runs, right, line_right, slowest


STAND_IN = """
import os, subprocess, sys, time
ranks = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], env={**os.environ, "RANK": str(r)})
         for r in range(int(sys.argv[1]))]
time.sleep(float(sys.argv[2]))
for p in ranks:
    p.kill()
"""


def watch_cost(ranks: int, seconds: float) -> tuple[float, int]:
    """(CPU seconds of the watcher's thread over `seconds`, processes on this machine)."""
    # kit_env: no RANK of the shell's, which would hide rank 0 (its RANK the same as the stand-in launcher's)
    proc = subprocess.Popen([sys.executable, "-c", STAND_IN, str(ranks), str(seconds + 5)], env=launch.kit_env())
    try:
        time.sleep(1.0)
        with procs.RankExits(proc.pid) as exits:
            time.sleep(seconds)
            tid = exits._thread.native_id
            cpu = next(t.user_time + t.system_time for t in psutil.Process().threads() if t.id == tid)
    finally:
        procs.stop_tree(proc, grace_s=1.0)
    return cpu, len(psutil.pids())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=4, help="kills per launcher (the victim goes round the ranks)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the ranks run")
    ap.add_argument("--world-size", type=int, default=2, help="ranks per run (cuda: at most one per GPU)")
    ap.add_argument("--launchers", default="deepspeed,mpirun")
    ap.add_argument("--load", type=int, default=0, help="busy processes running meanwhile (a loaded machine)")
    ap.add_argument("--ranks", type=int, default=8, help="part 2: ranks under the stand-in launcher")
    ap.add_argument("--watch-s", type=float, default=30.0, help="part 2: seconds watched")
    args = ap.parse_args(argv)
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.load)]
    try:
        rows = [(name, *kill_runs(name, args.runs, args.device, args.world_size)) for name in args.launchers.split(",")]
        cpu, processes = watch_cost(args.ranks, args.watch_s)
    finally:
        for p in busy:
            p.kill()
            p.wait()
    print(f"\n{os.cpu_count()} cores, {args.load} busy processes meanwhile, {args.world_size} {args.device} ranks\n")
    print("| launcher | runs | named right (labkit) | named right (DeepSpeed's line) | slowest run s |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, runs, right, line_right, slowest in rows:
        line = f"{line_right}" if name == "deepspeed" else "n/a (no such line)"
        print(f"| {name} | {runs} | {right} | {line} | {slowest:.1f} |")
    print("\n| ranks watched | seconds | watcher CPU s | share of one core | processes on the machine |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    print(f"| {args.ranks} | {args.watch_s:.0f} | {cpu:.3f} | {cpu / args.watch_s:.2%} | {processes} |")
    return 0 if all(right == runs for _, runs, right, _, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
