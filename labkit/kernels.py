"""How `labkit run` starts a notebook's kernel: an encrypted channel, the run's work folder, its own log file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jupyter_client.manager import AsyncKernelManager
from traitlets import Unicode


class LoggedKernelManager(AsyncKernelManager):
    """A kernel whose own stderr goes to `stderr_path`, not the runner's terminal. What a cell prints reaches the
    notebook over iopub either way; what is left there is ipykernel's log, which includes the ZMQError traceback it
    prints when ^C or SIGTERM shuts it down mid-cell."""

    stderr_path = Unicode("", config=True, help="file the kernel's stderr is appended to ('': inherited)")

    async def start_kernel(self, **kw: Any) -> None:
        if not self.stderr_path:
            return await super().start_kernel(**kw)
        with open(self.stderr_path, "ab") as log:  # Popen hands the kernel its own copy of the descriptor
            return await super().start_kernel(stderr=log, **kw)


def kernel_options(work_dir: Path, log: Path) -> dict[str, Any]:
    """papermill's options for a kernel that runs in `work_dir` and logs to `log`. Kernels talk to the runner over
    TCP: jupyter_client provisions CurveZMQ keys to encrypt that wherever pyzmq and the kernelspec support it (which
    also ends ipykernel's "running over TCP without encryption" warning)."""
    import zmq
    from traitlets.config import Config

    encryption = {"transport_encryption": "auto" if zmq.has("curve") else "disabled"}
    config = Config({"KernelManager": encryption, "LoggedKernelManager": {"stderr_path": str(log)}})
    return {"cwd": str(work_dir), "start_timeout": 120, "config": config, "kernel_manager_class": LoggedKernelManager}
