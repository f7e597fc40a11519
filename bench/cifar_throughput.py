"""CIFAR-10 training throughput on one device: labkit through the DeepSpeed engine vs the same net in plain PyTorch
vs a DeepSpeedExamples-style baseline. One command, one run, the same data for every variant:

    python bench/cifar_throughput.py                      # GPU: 50,000 images, batch 2000; writes cifar_throughput.json
    python bench/cifar_throughput.py --device cpu         # CPU: small sizes (minutes on 2 cores)

Variants (images/s of training steps, eval and start-up excluded; the median of the epochs after the first):
  labkit               labkit.train.train() itself: deepspeed.initialize, ZeRO-0, bf16 through "torch_autocast",
                       data resident on the device, crops/flips on the device, channels_last inputs
  labkit_engine_bf16   the same, with DeepSpeed's "bf16" section instead (bf16 weights + fp32 master copy)
  labkit_ds_timers     the same as labkit, with DeepSpeed's throughput timer left on (its default: two device
                       synchronisations per step)
  labkit_compiled      the same as labkit, compiled through DeepSpeed's engine.compile() (`--compile`); its first
                       step (compilation) is reported apart as warmup_s, the rate is the epochs after the first
  airbench94           airbench94 from PyPI (`pip install airbench`, its eager fp16 net, SGD + lookahead, batch 1024),
                       fed the same synthetic tensors through its own CifarLoader; a warm-up run, then a timed one
  plain_pytorch        the same network, data feed, batch and optimizer in eager PyTorch with bf16 autocast
  baseline             DeepSpeedExamples' cifar10_deepspeed.py recipe: LeNet, batch 16, per-image CPU transforms
                       through the DataLoader deepspeed.initialize builds, "bf16" section, ZeRO-0
and a profile of one engine step (host time per call, device synchronisations, top ops) that explains the gaps.
Data: synthetic images in the CIFAR-10 format (no download here); the throughput does not depend on pixel values.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from labkit import data, train  # noqa: E402
from labkit.compat import chdir  # noqa: E402
from labkit.devices import pick_device  # noqa: E402
from labkit.model import build_model  # noqa: E402


def environment(device: str) -> dict:
    import deepspeed
    import torch

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "deepspeed": deepspeed.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "device": device,
    }
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
    return env


def labkit_config(args, **changes) -> train.TrainConfig:
    return train.TrainConfig(
        **{
            **dict(
                synthetic=True,
                model="resnet",
                width=args.width,
                epochs=args.epochs,
                micro_batch=args.batch,
                device=args.device,
                dtype=args.dtype,
                stage=0,
                progress=False,
                max_test=2000,
            ),
            **changes,
        }
    )


def run_labkit(args, arrays, name: str, ds_overrides: dict | None = None, **changes) -> dict:
    """labkit's real training path (train.run_in_process) on `arrays`; optional edits to its DeepSpeed config."""
    cfg = labkit_config(args, **changes)
    with tempfile.TemporaryDirectory() as tmp:
        if ds_overrides is not None:
            resolved = cfg.resolved()
            ds = train.deepspeed_config(resolved, train.plan_steps(resolved, len(arrays.train_labels))[1])
            for key, value in ds_overrides.items():
                if value is None:
                    ds.pop(key, None)
                else:
                    ds[key] = value
            path = Path(tmp) / "ds.json"
            path.write_text(json.dumps(ds))
            cfg = dataclasses.replace(cfg, deepspeed_config=str(path))
        result = train.run_in_process(cfg, arrays)
    rates = [e["images_per_s"] for e in result["epochs_log"]]
    steady = rates[1:] or rates
    return {
        "name": name,
        "compiled": result.get("compiled"),
        "warmup_s": result.get("first_step_s"),
        "images_per_s": statistics.median(steady),
        "epochs_images_per_s": rates,
        "final_train_loss": result["final_train_loss"],
        "test_acc": result["final_test_acc"],
        "batch": result["global_batch"],
        "deepspeed_config": result["deepspeed_config"],
    }


def run_airbench94(args, arrays) -> dict:
    """airbench94 as published on PyPI, trained on this run's synthetic images (its loader reads `train.pt`/`test.pt`
    from a folder, so the arrays are saved there in its format: uint8 NHWC images, int64 labels)."""
    import math

    import airbench
    import torch

    if args.device != "cuda":
        raise RuntimeError("airbench94 needs a CUDA GPU (its network is built with .half().cuda())")
    with tempfile.TemporaryDirectory() as tmp, chdir(tmp):  # it reads ./cifar10/test.pt itself
        os.mkdir("cifar10")
        for split, images, labels in (
            ("train", arrays.train_images, arrays.train_labels),
            ("test", arrays.test_images, arrays.test_labels),
        ):
            nhwc = torch.from_numpy(images).permute(0, 2, 3, 1).contiguous()
            torch.save(
                {"images": nhwc, "labels": torch.from_numpy(labels), "classes": list(arrays.label_names)},
                f"cifar10/{split}.pt",
            )
        hyp = airbench.lib_airbench94.hyp
        loader = airbench.CifarLoader(
            "cifar10", train=True, batch_size=hyp["opt"]["batch_size"], aug=hyp["aug"], altflip=True
        )
        steps = math.ceil(len(loader) * args.epochs)
        times = []
        for _ in range(2):  # the first run pays cuDNN autotuning and lazy initialisation
            _sync("cuda")
            t0 = time.perf_counter()
            airbench.train94(loader, epochs=args.epochs, verbose=False)
            _sync("cuda")
            times.append(time.perf_counter() - t0)
    return {
        "name": "airbench94",
        "images_per_s": steps * loader.batch_size / times[-1],
        "runs_s": times,
        "batch": loader.batch_size,
        "epochs": args.epochs,
        "airbench": getattr(airbench, "__version__", "0.1.8"),
    }


def run_plain(args, arrays) -> dict:
    """The same network and data feed in eager PyTorch: the ceiling the engine is measured against."""
    import torch
    import torch.nn.functional as F

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model("resnet", args.width).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    low = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.dtype)
    feed = data.DeviceData(arrays, device, low or torch.float32)
    per_epoch = feed.train_size // args.batch
    rates, loss = [], None
    for epoch in range(args.epochs):
        _sync(args.device)
        t0 = time.perf_counter()
        for x, y in feed.epoch(epoch, args.batch, per_epoch, 1):
            with torch.autocast(device.type, dtype=low, enabled=low is not None):
                out = model(x)
            loss = F.cross_entropy(out.float(), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        _sync(args.device)
        rates.append(per_epoch * args.batch / (time.perf_counter() - t0))
    return {
        "name": "plain_pytorch",
        "images_per_s": statistics.median(rates[1:] or rates),
        "epochs_images_per_s": [round(r, 1) for r in rates],
        "final_train_loss": loss.item(),
        "batch": args.batch,
    }


class PerImageCifar:
    """DeepSpeedExamples' data path: one HWC uint8 image at a time -> ToTensor -> Normalize((0.5,)*3, (0.5,)*3)."""

    def __init__(self, images_nchw, labels):
        self.images = images_nchw.transpose(0, 2, 3, 1).copy()  # HWC, as torchvision's CIFAR10 stores them
        self.labels = labels
        try:  # the example's own transforms when torchvision is there (it is not installed on the CPU machine)
            import torchvision.transforms as T
            from PIL import Image

            tf = T.Compose([T.ToTensor(), T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
            self.transform, self.kind = (lambda img: tf(Image.fromarray(img))), "torchvision PIL"
        except ImportError:
            import torch

            self.transform = lambda img: torch.from_numpy(img).permute(2, 0, 1).float().div(255).sub(0.5).div(0.5)
            self.kind = "torch per-image"

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(self.images[i]), int(self.labels[i])


def run_baseline(args, arrays) -> dict:
    import deepspeed
    import torch
    import torch.nn.functional as F

    cfg = {
        "train_batch_size": 16,
        "steps_per_print": 10**9,
        "optimizer": {
            "type": "Adam",
            "params": {"lr": 0.001, "betas": [0.8, 0.999], "eps": 1e-8, "weight_decay": 3e-7, "torch_adam": True},
        },  # the example uses FusedAdam; torch's Adam avoids a JIT build
        "scheduler": {
            "type": "WarmupLR",
            "params": {"warmup_min_lr": 0, "warmup_max_lr": 0.001, "warmup_num_steps": 1000},
        },
        "zero_optimization": {"stage": 0},
        "gradient_clipping": 1.0,
    }
    if args.dtype == "bf16":
        cfg["bf16"] = {"enabled": True}
    dataset = PerImageCifar(arrays.train_images, arrays.train_labels)
    with _single_rank():
        net = build_model("lenet")
        engine, _, loader, _ = deepspeed.initialize(
            model=net, model_parameters=net.parameters(), training_data=dataset, config=cfg
        )
        low = torch.bfloat16 if args.dtype == "bf16" else torch.float32
        images, start, t0 = 0, None, time.perf_counter()
        deadline = t0 + args.baseline_seconds + args.baseline_warmup
        while time.perf_counter() < deadline:
            for x, y in loader:
                x, y = x.to(engine.device).to(low), y.to(engine.device)
                loss = F.cross_entropy(engine(x).float(), y)
                engine.backward(loss)
                engine.step()
                if start is None and time.perf_counter() - t0 > args.baseline_warmup:
                    _sync(args.device)
                    start, images = time.perf_counter(), 0
                elif start is not None:
                    images += len(y)
                if time.perf_counter() > deadline:
                    break
        _sync(args.device)
        seconds = time.perf_counter() - start
    return {
        "name": "baseline",
        "images_per_s": images / seconds,
        "batch": 16,
        "data_path": dataset.kind,
        "loader_workers": getattr(loader, "num_local_io_workers", None),
        "measured_s": round(seconds, 1),
    }


def profile_engine(args, arrays) -> dict:
    """Where the engine's time goes: host milliseconds per call (no sync), the same synchronised, device syncs per
    step, for labkit's config and for the same config with DeepSpeed's default throughput timer."""
    import deepspeed
    import torch.nn.functional as F

    out = {}
    for name, timers in (("labkit", {"throughput": {"enabled": False}}), ("ds_default_timers", None)):
        cfg = labkit_config(args).resolved()
        ds = train.deepspeed_config(cfg, 1000)
        if timers is None:
            ds.pop("timers")
        with _single_rank(), _count_syncs() as syncs:
            model = build_model("resnet", args.width)
            engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds)
            feed = data.DeviceData(arrays, engine.device, train.input_dtype(ds))
            batches = list(feed.epoch(0, args.batch, min(30, feed.train_size // args.batch), 1))
            phases = {
                "forward": [],
                "backward": [],
                "step": [],
                "forward_synced": [],
                "backward_synced": [],
                "step_synced": [],
            }
            for synced in (False, True):
                syncs["n"] = 0
                for i, (x, y) in enumerate(batches):
                    loss = None
                    for phase in ("forward", "backward", "step"):
                        t = time.perf_counter()
                        if phase == "forward":
                            loss = F.cross_entropy(engine(x).float(), y)
                        else:
                            engine.backward(loss) if phase == "backward" else engine.step()
                        if synced:
                            _sync(args.device)
                        if i >= 5:  # after warm-up
                            phases[phase + ("_synced" if synced else "")].append((time.perf_counter() - t) * 1e3)
                if not synced:
                    syncs_per_step = syncs["n"] / len(batches)
                    _sync(args.device)
            entry = {k: round(statistics.median(v), 3) for k, v in phases.items() if v}
            entry["device_syncs_per_step"] = round(syncs_per_step, 2)
            if args.device == "cuda":
                entry.update(_torch_profile(engine, batches, args.device))
            out[name] = entry
            engine = None  # freed before the next variant
    return out


def _torch_profile(engine, batches, device: str) -> dict:
    """torch.profiler over 10 engine steps: the top ops by host time and the device synchronisations seen."""
    import torch
    import torch.nn.functional as F

    try:
        with torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        ) as prof:
            for x, y in batches[:10]:
                engine.backward(F.cross_entropy(engine(x).float(), y))
                engine.step()
            _sync(device)
    except Exception as exc:  # the profiler needs CUPTI; the host timings stand without it
        return {"profiler_error": f"{type(exc).__name__}: {exc}"}
    events = prof.key_averages()
    return {
        "profiler_top_self_cpu": events.table(sort_by="self_cpu_time_total", row_limit=12),
        "sync_events": {e.key: e.count for e in events if "ynchronize" in e.key},
    }


@contextlib.contextmanager
def _count_syncs():
    """Count device synchronisations (torch.cuda.synchronize and DeepSpeed's accelerator.synchronize)."""
    import torch
    from deepspeed.accelerator import get_accelerator

    counter = {"n": 0, "depth": 0}
    acc = get_accelerator()
    originals = (torch.cuda.synchronize, acc.synchronize)

    def counted(fn):
        def wrapper(*a, **k):
            counter["n"] += counter["depth"] == 0  # DeepSpeed's CUDA synchronize calls torch's: count it once
            counter["depth"] += 1
            try:
                return fn(*a, **k)
            finally:
                counter["depth"] -= 1

        return wrapper

    torch.cuda.synchronize, acc.synchronize = counted(originals[0]), counted(originals[1])
    try:
        yield counter
    finally:
        torch.cuda.synchronize, acc.synchronize = originals


@contextlib.contextmanager
def _single_rank():
    """torch.distributed for one rank in this process, torn down afterwards (as labkit.train does)."""
    cfg = train.TrainConfig(synthetic=True)
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        os.environ.pop(k, None)
    train.init_distributed(cfg)
    try:
        yield
    finally:
        train.shutdown_distributed()
        for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_SIZE", "MASTER_ADDR", "MASTER_PORT"):
            os.environ.pop(k, None)


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--train-images", type=int, default=0, help="0 = 50,000 on a GPU, 2,048 on a CPU")
    parser.add_argument("--batch", type=int, default=0, help="0 = 2000 on a GPU, 128 on a CPU")
    parser.add_argument("--epochs", type=int, default=0, help="0 = 6 on a GPU, 3 on a CPU (the first is warm-up)")
    parser.add_argument("--width", type=float, default=1.0, help="resnet width multiplier (1.0 = airbench94 widths)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"])
    parser.add_argument("--baseline-seconds", type=float, default=0, help="0 = 15 on a GPU, 10 on a CPU")
    parser.add_argument("--baseline-warmup", type=float, default=3.0)
    parser.add_argument(
        "--variants",
        default="labkit,labkit_compiled,airbench94,labkit_engine_bf16,labkit_ds_timers,plain_pytorch,baseline,profile",
    )
    parser.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "cifar_throughput.json"))
    args = parser.parse_args(argv)
    if args.device != "auto":
        os.environ.setdefault("DS_ACCELERATOR", args.device)
    args.device = pick_device(args.device)
    gpu = args.device == "cuda"
    args.train_images = args.train_images or (50_000 if gpu else 2048)
    args.batch = args.batch or (2000 if gpu else 128)
    args.epochs = args.epochs or (6 if gpu else 3)
    args.baseline_seconds = args.baseline_seconds or (15 if gpu else 10)
    args.dtype = ("bf16" if gpu else "fp32") if args.dtype == "auto" else args.dtype
    arrays = data.synthetic_arrays(train=args.train_images, test=2000, seed=0)
    print(
        f"data: {arrays.source} (synthetic, CIFAR-10 format); device {args.device}; batch {args.batch}; "
        f"{args.epochs} epochs per variant",
        flush=True,
    )

    chosen = args.variants.split(",")
    results: dict = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "environment": environment(args.device),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "variants": {},
    }
    runners = {
        "labkit": lambda: run_labkit(args, arrays, "labkit"),
        "labkit_engine_bf16": lambda: run_labkit(args, arrays, "labkit_engine_bf16", amp="engine"),
        "labkit_ds_timers": lambda: run_labkit(args, arrays, "labkit_ds_timers", ds_overrides={"timers": None}),
        "labkit_compiled": lambda: run_labkit(args, arrays, "labkit_compiled", compile=True),
        "airbench94": lambda: run_airbench94(args, arrays),
        "plain_pytorch": lambda: run_plain(args, arrays),
        "baseline": lambda: run_baseline(args, arrays),
    }
    for name in chosen:
        if name in runners:
            if name in ("labkit_engine_bf16",) and args.dtype != "bf16":
                continue
            t = time.perf_counter()
            try:
                results["variants"][name] = runners[name]()
            except Exception as exc:  # one broken variant must not lose the others' numbers
                results["variants"][name] = {"name": name, "error": f"{type(exc).__name__}: {exc}"}
            results["variants"][name]["wall_s"] = round(time.perf_counter() - t, 1)
            print(
                f"{name}: {json.dumps({k: v for k, v in results['variants'][name].items() if k != 'deepspeed_config'})}",  # noqa: E501
                flush=True,
            )
    if "profile" in chosen:
        try:
            results["profile"] = profile_engine(args, arrays)
        except Exception as exc:
            results["profile"] = {"error": f"{type(exc).__name__}: {exc}"}
        for name, entry in results["profile"].items():
            if isinstance(entry, dict) and "profiler_top_self_cpu" in entry:
                print(f"--- profile ({name}) ---\n{entry['profiler_top_self_cpu']}")

    v = {k: r.get("images_per_s") for k, r in results["variants"].items()}
    ratios = {}
    if v.get("labkit") and v.get("plain_pytorch"):
        ratios["labkit_vs_plain"] = v["labkit"] / v["plain_pytorch"]
    if v.get("labkit") and v.get("baseline"):
        ratios["labkit_vs_baseline"] = v["labkit"] / v["baseline"]
    if v.get("labkit") and v.get("labkit_ds_timers"):
        ratios["labkit_vs_ds_default_timers"] = v["labkit"] / v["labkit_ds_timers"]
    for a, b in (
        ("labkit_compiled", "airbench94"),
        ("labkit", "airbench94"),
        ("labkit_compiled", "plain_pytorch"),
        ("labkit_compiled", "labkit"),
    ):
        if v.get(a) and v.get(b):
            ratios[f"{a}_vs_{b}".replace("plain_pytorch", "plain")] = v[a] / v[b]
    results["ratios"] = {k: round(r, 3) for k, r in ratios.items()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1, default=str))

    print(
        f"\n{results['environment'].get('gpu', results['environment']['cpu'])}, "
        f"torch {results['environment']['torch']}, "
        f"deepspeed {results['environment']['deepspeed']}, {arrays.source}"
    )
    print(f"{'variant':<22}{'images/s':>12}  notes")
    for name, r in results["variants"].items():
        rate = f"{r['images_per_s']:,.0f}" if r.get("images_per_s") else "error"
        note = r.get("error") or f"batch {r.get('batch')}" + (f", {r['data_path']}" if "data_path" in r else "")
        note += f", first step (compilation) {r['warmup_s']:.1f} s" if r.get("compiled") else ""
        print(f"{name:<22}{rate:>12}  {note}")
    for name, entry in results.get("profile", {}).items():
        if isinstance(entry, dict) and "forward" in entry:
            print(
                f"profile {name:<16} host ms fwd/bwd/step {entry['forward']}/{entry['backward']}/{entry['step']}, "
                f"synced {entry.get('forward_synced')}/{entry.get('backward_synced')}/{entry.get('step_synced')}, "
                f"device syncs per step {entry['device_syncs_per_step']}"
            )
    for k, r in results["ratios"].items():
        print(f"{k}: {r:.3f}")
    print(f"full results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
