"""Inside a rank: the one bootstrap (`init_deepspeed`), error report and teardown (`rank_guard`) of every labkit.ranks
script and of the in-process notebook rank. The launcher side (building and running `deepspeed ...`, reading a failed
run's output) is `labkit.launch`. Light: torch and DeepSpeed are imported inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import io
import os
import socket
import sys
import traceback
import warnings
from collections.abc import Iterator

from labkit.checks import major_minor
from labkit.devices import pick_device
from labkit.errors import LabkitError
from labkit.launch import BACKEND_OF, LOOPBACK, RANK_ERROR_TAG, free_port
from labkit.procs import silenced_fds


def say(text: str) -> None:
    # One write per line: print() writes text and newline apart, and mpirun's --tag-output glues in another rank's.
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def rank_and_world() -> tuple[int, int]:
    """This rank's number and the world size, from the launcher's environment (DeepSpeed/torchrun or Open MPI)."""
    rank = os.environ.get("RANK", os.environ.get("OMPI_COMM_WORLD_RANK", 0))
    return int(rank), int(os.environ.get("WORLD_SIZE", os.environ.get("OMPI_COMM_WORLD_SIZE", 1)))


def set_local_size() -> str | None:
    """LOCAL_SIZE (the ranks on this host) from the launcher's count when unset: DeepSpeed's CPU accelerator counts
    its devices by it; torchrun sets only LOCAL_WORLD_SIZE, mpirun only OMPI_COMM_WORLD_LOCAL_SIZE. The value now."""
    if local := os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE"):
        os.environ.setdefault("LOCAL_SIZE", local)
    return os.environ.get("LOCAL_SIZE")


def init_deepspeed(device: str = "", *, timeout_s: float | None = None, verbose: bool = False) -> None:
    """The one start of a rank's process group (every labkit.ranks script and the in-process notebook rank), without
    build noise: DeepSpeed's accelerator is named, not detected (no "Setting accelerator to CPU" warning); its op
    compatibility probe (which links test programs: a missing libaio makes ld print errors) runs with its output to
    /dev/null; FutureWarnings of torch and DeepSpeed are off; nothing is compiled (see below)."""
    import logging
    from datetime import timedelta

    device = device or os.environ.get("DS_ACCELERATOR") or pick_device("auto")
    # Whatever an earlier run in this process named: DeepSpeed's first accelerator would keep a CUDA run on the CPU.
    os.environ["DS_ACCELERATOR"] = device
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(torch|deepspeed)\b")
    import deepspeed
    from deepspeed.accelerator import get_accelerator, real_accelerator

    if real_accelerator.ds_accelerator is not None and real_accelerator.ds_accelerator.device_name() != device:
        real_accelerator.ds_accelerator = None  # chosen again from DS_ACCELERATOR at the next get_accelerator()
    from deepspeed.utils import logger

    logger.setLevel(logging.INFO if verbose else logging.ERROR)  # e.g. a scheduler read before its first step
    shm_op = get_accelerator().create_op_builder("ShareMemCommBuilder")  # None on GPUs
    if shm_op is not None:
        with silenced_fds():
            compatible = deepspeed.ops.__compatible_ops__  # computed on first access, then the one cached dict
        # Left compatible, every CPU rank JIT-compiles this op (~60 s on 2 cores) under torch's ownerless file lock (a
        # rank killed mid-build once hung a CI set-up 90 min). It serves only tensor-parallel inference: DS builds
        # it only while marked compatible (deepspeed/comm/torch.py, build_shm_op), so the kit compiles nothing.
        compatible[shm_op.NAME] = False
    if "RANK" not in os.environ and "OMPI_COMM_WORLD_RANK" not in os.environ:  # started plainly: a world of one
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_SIZE="1", MASTER_ADDR="127.0.0.1")
        os.environ["MASTER_PORT"] = str(free_port())
    set_local_size()
    # Under mpirun DeepSpeed's MPI discovery overwrites MASTER_PORT with `distributed_port` (default 29500, which
    # another job may hold): pass the port the launcher chose.
    port = int(os.environ.get("MASTER_PORT") or 29500)
    wait = {} if timeout_s is None else {"timeout": timedelta(seconds=timeout_s)}
    # Every rank on this machine: DeepSpeed adopts this group (gloo, NCCL; HCCL not yet run on a Gaudi). Not under
    # torchrun (accelerate launch), whose agent already holds the store's port.
    on_this_machine = os.environ.get("MASTER_ADDR") in LOOPBACK and "TORCHELASTIC_RUN_ID" not in os.environ
    if on_this_machine and device in ("cpu", "cuda"):
        _loopback_process_group(BACKEND_OF[device], port, wait.get("timeout", timedelta(minutes=30)))
    with contextlib.redirect_stdout(io.StringIO()):
        deepspeed.init_distributed(dist_backend=BACKEND_OF[device], distributed_port=port, **wait)


def _loopback_process_group(backend: str, port: int, timeout) -> None:
    """The process group on a rendezvous store that only this machine can reach. torch's TCPStore listens on every
    interface whatever MASTER_ADDR says (torch/csrc/distributed/c10d/TCPStoreLibUvBackend.cpp, LibUVStoreDaemon::init:
    UvTcpServer::makeWithPort binds the any-address) unless handed a listening socket: rank 0 binds one to 127.0.0.1."""
    import torch.distributed as dist

    rank, world = rank_and_world()
    env = os.environ  # what DeepSpeed's MPI discovery would set under a local mpirun (it is skipped now)
    env.update(RANK=str(rank), WORLD_SIZE=str(world))
    env.setdefault("LOCAL_RANK", env.get("OMPI_COMM_WORLD_LOCAL_RANK", "0"))  # the deepspeed launcher sets its own
    if world == 1:  # a world of one (a kernel's in-process rank) needs no socket at all: an in-memory store
        return dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    try:
        fd = socket.create_server(("127.0.0.1", port), backlog=max(128, world)).detach() if rank == 0 else None
    except OSError as exc:  # named as torch names it (EADDRINUSE: another job holds the port)
        name = errno.errorcode.get(exc.errno, "?")
        raise OSError(exc.errno, f"rendezvous store: 127.0.0.1:{port} cannot listen ({name}: {exc.strerror})") from None
    libuv = _libuv_takes_fd()
    store = dist.TCPStore("127.0.0.1", port, world, rank == 0, timeout, master_listen_fd=fd, use_libuv=libuv)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)


def _libuv_takes_fd() -> bool:
    """Whether torch's libuv store can serve on a socket it is handed: from torch 2.8 (pytorch PR 150215,
    "TCPStoreLibUvBackend: support masterListenFd"; 2.8.0 seen to); older ones raise NotImplementedError (2.4.1 and
    2.6.0 seen), so they get the legacy store, which always could."""
    import torch

    return major_minor(torch.__version__) >= (2, 8)


def shutdown_distributed(in_step: bool = True) -> None:
    """Tear the process group down in order while the interpreter is whole: collect the engine's cycles (they hold
    sub-groups), wait for the peers (`in_step`: not after a failure), destroy every group through DeepSpeed (which also
    drops its cached backend, so a later run in the same process starts clean). A gloo group left to interpreter
    shutdown can abort the process ("terminate called without an active exception")."""
    gc.collect()
    dist, comm = sys.modules.get("torch.distributed"), sys.modules.get("deepspeed.comm.comm")
    if dist is not None and dist.is_available() and dist.is_initialized():
        if in_step:  # no peer is still sending when the groups go (NCCL: on this rank's device, or torch warns)
            nccl = dist.get_backend() == "nccl"
            dist.barrier(**({"device_ids": [sys.modules["torch"].cuda.current_device()]} if nccl else {}))
        # through DeepSpeed when it made the groups: it also releases the references its group caches hold
        (comm.destroy_process_group if comm is not None and comm.cdb is not None else dist.destroy_process_group)()
    if comm is not None:
        comm.cdb = None
    gc.collect()


@contextlib.contextmanager
def rank_guard() -> Iterator[None]:
    """The one error report and teardown of a rank script. An uncaught error becomes one tagged line that `run` reports
    (`LABKIT_RANK_ERROR rank=N Type: text`), with its traceback unless a LabkitError (which names field and fix); under
    mpirun the failed rank then aborts the job (a normal exit would wait in MPI_Finalize for peers waiting for it).
    Either way the process group is shut down in order before the interpreter exits (`shutdown_distributed`)."""
    rank, world = rank_and_world()
    failed = False
    try:
        yield
    except BaseException as exc:
        if failed := not isinstance(exc, SystemExit) or exc.code not in (0, None):
            # its first line of text: some libraries' messages start with a newline (transformers' ImportError)
            text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
            sys.stderr.write(f"{RANK_ERROR_TAG} rank={rank} {type(exc).__name__}: {text}\n")  # one write: mpirun's
            if not isinstance(exc, LabkitError):  # --tag-output would glue another rank's text onto a line in two parts
                traceback.print_exc()
            sys.stdout.flush()
            sys.stderr.flush()
            if world > 1 and "OMPI_COMM_WORLD_SIZE" in os.environ and "mpi4py" in sys.modules:
                from mpi4py import MPI

                MPI.COMM_WORLD.Abort(1)
        if failed and isinstance(exc, LabkitError):
            raise SystemExit(1) from None  # its line said it all: no traceback when the interpreter exits
        raise
    finally:
        shutdown_distributed(in_step=not failed)
