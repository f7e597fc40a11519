"""How the kit's Jupyter kernels are started, alike for `labkit run` (notebooks.py) and `make lab` (scripts/lab.sh):
an encrypted channel, and for `labkit run` the run's work folder and a log file of the kernel's own."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

from jupyter_client.manager import AsyncKernelManager
from traitlets import Unicode

# jupyter_client interrupts a kernel before shutting it down; a kernel still in a message handler then logs this (either
# of ipykernel's two wordings, kernelbase.py) in a run where everything passed: nothing the learner did or can act on.
SHUTDOWN_NOISE = frozenset(f"[IPKernelApp] ERROR | KeyboardInterrupt caught in kernel{end}" for end in (".", ""))


def transport_encryption() -> str:
    """Kernels talk to their manager over TCP: jupyter_client provisions CurveZMQ keys to encrypt that wherever pyzmq
    and the kernelspec support it (which also ends ipykernel's "running over TCP without encryption" warning). Where
    pyzmq has no CURVE, jupyter_client refuses "auto" at every kernel start, so it is off there."""
    import zmq

    return "auto" if zmq.has("curve") else "disabled"


# tornado >= 6.5 reads jupyter_server's ping settings, which are in milliseconds, as seconds and warns in `make lab`'s
# terminal each time a notebook connects: "The websocket_ping_timeout (90000) cannot be longer than the
# websocket_ping_interval (30000)" (jupyter-server/jupyter_server#1612, open; its base/websocket.py keeps its own 30 s
# ping and 90 s timeout, which still work). Nothing a learner can act on. scripts/jupyter-config/ installs the filter.
PING_NOTICE = "The websocket_ping_timeout ("


class PingNoticeFilter(logging.Filter):
    """Drops tornado's notice above, and nothing else, from a Jupyter server's log (a logging.config filter)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(PING_NOTICE)


def jupyter_options() -> list[str]:
    """The same choice as options of a Jupyter server (`jupyter lab`)."""
    return [f"--KernelManager.transport_encryption={transport_encryption()}"]


class LoggedKernelManager(AsyncKernelManager):
    """A kernel whose own stderr goes to `stderr_path`, not the runner's terminal. What a cell prints reaches the
    notebook over iopub either way; what is left there is ipykernel's log, which includes the ZMQError traceback it
    prints when ^C or SIGTERM shuts it down mid-cell."""

    stderr_path = Unicode("", config=True, help="file the kernel's stderr is appended to ('': inherited)")

    _shutting_down: asyncio.Future | None = None

    async def start_kernel(self, **kw: Any) -> None:
        if not self.stderr_path:
            return await super().start_kernel(**kw)
        with open(self.stderr_path, "ab") as log:  # Popen hands the kernel its own copy of the descriptor
            return await super().start_kernel(stderr=log, **kw)

    async def shutdown_kernel(self, now: bool = False, restart: bool = False) -> None:
        """One shutdown at a time: a second call while one runs waits for it. On ^C or SIGTERM nbclient shuts the
        kernel down twice at once (its signal handler's cleanup and its finally's), and two resolve jupyter_client's
        `ready` future twice: InvalidStateError, logged with a Traceback (jupyter/jupyter_client#967)."""
        if self._shutting_down is None or self._shutting_down.done():
            self._shutting_down = asyncio.ensure_future(super().shutdown_kernel(now=now, restart=restart))
        await asyncio.shield(self._shutting_down)  # a cancelled waiter leaves the shutdown running


def kernel_options(work_dir: Path, log: Path) -> dict[str, Any]:
    """papermill's options for a kernel that runs in `work_dir`, encrypted where it can be, logging to `log`."""
    from traitlets.config import Config

    encryption = {"transport_encryption": transport_encryption()}
    config = Config({"KernelManager": encryption, "LoggedKernelManager": {"stderr_path": str(log)}})
    return {"cwd": str(work_dir), "start_timeout": 120, "config": config, "kernel_manager_class": LoggedKernelManager}


# jupyter_client's words (client.py, _async_wait_for_ready) for a kernel that never answered its first request
START_FAILURES = ("Kernel died before replying to kernel_info", "Kernel didn't respond in")
# nbclient's line (client.py, _async_check_alive) for a kernel that died in a cell, logged through papermill's logger,
# which has no handler: Python's last resort printed it above the run's own failure line, which says more.
KERNEL_DIED_LOG = "Kernel died while waiting for execute reply."


@contextlib.contextmanager
def death_told_once():
    """papermill's logger without nbclient's dead-kernel line while a notebook runs (the run's failure says it)."""
    logger = logging.getLogger("papermill")
    logger.addFilter(_not_the_death_line)
    try:
        yield
    finally:
        logger.removeFilter(_not_the_death_line)


def _not_the_death_line(record: logging.LogRecord) -> bool:
    return record.getMessage() != KERNEL_DIED_LOG


def start_failure(exc: BaseException) -> str | None:
    """What a run says of a kernel that did not start (`exc`, papermill's error; its own reason is in its log, which
    log_note adds); None for any other error."""
    if not isinstance(exc, RuntimeError) or not str(exc).startswith(START_FAILURES):
        return None
    return f"the kernel did not start ({exc})"


def _kept_lines(path: Path) -> list[str]:
    """A kernel's log without the shutdown's noise, written back so; a log left empty is removed. The one reader."""
    if not path.exists():
        return []
    lines = path.read_text(errors="replace").splitlines(keepends=True)
    kept = [line for line in lines if line.rstrip("\r\n") not in SHUTDOWN_NOISE]
    if not kept:
        path.unlink()
    elif len(kept) < len(lines):
        path.write_text("".join(kept))
    return kept


def log_note(path: Path, *, last_words: bool) -> str:
    """What a failed run adds of its kernel's log at `path` (tidied by _kept_lines either way): with `last_words` (a
    kernel that died or did not start: its reason went there, on no screen) its last line, then where it is; "" for a
    log that says nothing."""
    kept = [line.strip() for line in _kept_lines(path)]
    reason = next((line for line in reversed(kept) if line), "") if last_words else ""
    return (f": {reason}" if reason else "") + (f" (the kernel's log: {path})" if kept else "")


if __name__ == "__main__":  # scripts/lab.sh reads them from here
    print(*jupyter_options())
