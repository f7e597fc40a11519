"""`labkit serve`: a model served from a DeepSpeed job of local ranks, in the foreground until POST /shutdown or
SIGTERM / Ctrl-C (then every rank stops)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from labkit import manifests
from labkit.devices import DEVICE_CHOICES
from labkit.errors import LaunchError, check_number
from labkit.serving import job, local
from labkit.serving.config import DEFAULT_PORT, MODES, ServeConfig
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
    cluster = s.add_argument_group("in a cluster (--job-yaml: print the manifests, start nothing here)")
    cluster.add_argument("--job-yaml", action="store_true", help="MPIJob + Service + NetworkPolicy for kubectl apply")
    cluster.add_argument("--name", default="deepspeed-serve", help="job name (the Service is NAME-serve)")
    cluster.add_argument("--namespace", help=f"namespace of the job (default: {manifests.DEFAULT_NAMESPACE})")
    cluster.add_argument("--workers", type=int, default=2, help="worker pods (ranks = workers x slots)")
    cluster.add_argument("--slots", type=int, default=None, help="ranks per worker (default: the overlay's)")
    cluster.add_argument("--accelerator", default="cpu", choices=("cpu", "nvidia", "gaudi"), help="the workers' kind")
    cluster.add_argument("--image", default=None, help="container image (default: the kit's for the accelerator)")
    s.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    if args.job_yaml:
        return _job_yaml(args)
    check_number(
        "--ready-timeout", args.ready_timeout, 0.0, "pass seconds > 0 (loading takes tens of them)", strict=True
    )
    options = {"model": args.model, "mode": args.mode, "host": args.host, "port": args.port}
    config, ranks, why = local.plan(args.world_size, args.device, max_batch=args.max_batch, **options)
    service = local.LocalService(config, ranks, on_output=_echo)
    print(f"{ranks} x {config.device} rank(s) ({why}), model {config.model}, mode {config.mode}")
    print("command:", " ".join(service.command), flush=True)
    if args.dry_run:
        return 0
    stop, interrupted = threading.Event(), False
    previous = signal.signal(signal.SIGTERM, lambda _s, _f: stop.set())
    try:
        service.start()
        service.wait_ready(args.ready_timeout)
        print(f"serving {service.url}: POST /predict, GET /healthz?deep=1, POST /shutdown (or Ctrl-C)", flush=True)
        while service.running and not stop.wait(0.2):
            pass
    except KeyboardInterrupt:
        print("stopping every rank", file=sys.stderr)
        interrupted = True
    finally:
        try:
            code = service.close()  # graceful: every rank exits 0; then nothing may be left running (a 2nd ^C too)
        finally:
            signal.signal(signal.SIGTERM, previous)
    if interrupted:
        print("labkit: interrupted", file=sys.stderr)
        return 130
    if code != 0:
        raise LaunchError(service.failure(), returncode=code, output=service.output[-8000:])
    print("stopped: every rank exited 0")
    return 0


def _echo(line: str) -> None:
    if not line.startswith(READY_TAG):
        sys.stderr.write(line)
        sys.stderr.flush()


def _job_yaml(args: argparse.Namespace) -> int:
    config = ServeConfig(model=args.model, mode=args.mode, port=args.port, max_batch=args.max_batch)
    spec = {"name": args.name, "namespace": args.namespace, "workers": args.workers, "accelerator": args.accelerator}
    spec |= {"slots_per_worker": args.slots, "image": args.image}
    objects = job.cluster_manifests(config, **spec)
    namespace = objects[0]["metadata"]["namespace"]  # as resolved for the accelerator when left out
    service = f"{args.name}-serve.{namespace}:{config.port}"
    print(f"# kubectl apply -n {namespace} -f THIS_FILE   (a Service and a NetworkPolicy need rights the kit's")
    lab = manifests.default_namespace()
    print(f"# Role does not grant: an admin applies them); then, from the lab pod (namespace {lab}):")
    print(f"#   curl http://{service}/healthz   (and POST /shutdown ends every rank); to remove it all:")
    print(f"#   kubectl delete -n {namespace} mpijob/{args.name} service/{args.name}-serve "
          f"networkpolicy/{args.name}-serve")  # fmt: skip
    print(manifests.to_yaml(objects), end="")
    return 0
