"""`labkit serve`: a model served from a DeepSpeed job of local ranks, in the foreground until POST /shutdown or
SIGTERM / Ctrl-C (then every rank stops)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from labkit.devices import DEVICE_CHOICES
from labkit.errors import LaunchError
from labkit.serving import local
from labkit.serving.config import DEFAULT_PORT, MODES
from labkit.serving.models import MODELS
from labkit.serving.service import READY_TAG

_OPTIONS = (  # (flag, default, help, choices)
    ("--world-size", 0, "ranks on this machine (0: automatic, one per GPU, else 2 CPU ranks)", None),
    ("--device", "auto", "where ranks run", DEVICE_CHOICES),
    ("--port", DEFAULT_PORT, "TCP port of the HTTP endpoint (rank 0)", None),
    ("--host", "127.0.0.1", "address to listen on (0.0.0.0: every interface)", None),
    ("--mode", "tp", "tp: every layer split over the ranks; replicas: a whole copy per rank, the batch split", MODES),
    ("--model", "regressor", "; ".join(f"{m.name}: {m.about}" for m in MODELS.values()), tuple(MODELS)),
    ("--max-batch", 64, "most rows per request (more: HTTP 422)", None),
    ("--ready-timeout", 300.0, "seconds to wait for every rank to load", None),
)


def register(subparsers) -> None:
    s = subparsers.add_parser("serve", help="serve a model from DeepSpeed ranks over HTTP (every rank computes)")
    s.description = (
        "Starts N DeepSpeed ranks (deepspeed.init_inference, tensor-parallel or replicas); rank 0 answers HTTP: "
        'POST /predict {"inputs": [[...], ...]} -> {"outputs": [...]}, GET /healthz[?deep=1], POST /shutdown.'
    )
    for flag, default, help_text, choices in _OPTIONS:
        s.add_argument(flag, default=default, type=type(default), choices=choices, help=help_text)
    s.add_argument("--dry-run", action="store_true", help="validate and print the launch command, start nothing")
    s.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    options = {"model": args.model, "mode": args.mode, "host": args.host, "port": args.port}
    config, ranks, why = local.plan(args.world_size, args.device, max_batch=args.max_batch, **options)
    service = local.LocalService(config, ranks, on_output=_echo)
    print(f"{ranks} x {config.device} rank(s) ({why}), model {config.model}, mode {config.mode}")
    print("command:", " ".join(service.command), flush=True)
    if args.dry_run:
        return 0
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda _s, _f: stop.set())
    try:
        service.start()
        service.wait_ready(args.ready_timeout)
        print(f"serving {service.url}: POST /predict, GET /healthz?deep=1, POST /shutdown (or Ctrl-C)", flush=True)
        while service.running and not stop.wait(0.2):
            pass
    except KeyboardInterrupt:
        print("stopping every rank", file=sys.stderr)
    finally:
        code = service.shutdown()  # graceful: every rank exits 0; then nothing may be left running
        service.stop()
        signal.signal(signal.SIGTERM, previous)
    if code != 0:
        raise LaunchError(service.failure(), returncode=code, output=service.output[-8000:])
    print("stopped: every rank exited 0")
    return 0


def _echo(line: str) -> None:
    if not line.startswith(READY_TAG):
        sys.stderr.write(line)
        sys.stderr.flush()
