"""The one description of a served model (`ServeConfig`): validated once, before any rank starts, and passed to every
rank as command-line flags (`argv` / `from_argv` round-trip exactly).

Timing rules, checked here: the heartbeat is shorter than the collective timeout (so an idle rank's broadcast never
times out), and the per-step watchdog fires before the collective timeout (so rank 0 answers 503 itself).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields

from labkit.devices import DEVICE_KINDS
from labkit.errors import ConfigError, check_choice, check_int, check_number
from labkit.serving.models import MODELS, check_tp_size, model_info

MODES = ("tp", "replicas")  # tensor-parallel split of every layer | a whole copy per rank, the batch split over ranks
DEFAULT_PORT = 8000
SERVE_MODULE = "labkit.ranks.serve"  # what every rank runs
OWNER_ENV = "LABKIT_SERVE_OWNER"  # procs.process_token of the process that started the ranks: they stop when it exits


@dataclass
class ServeConfig:
    """What every rank of one service runs. Times in seconds."""

    model: str = "regressor"
    mode: str = "tp"
    device: str = "cpu"  # resolved already: cpu | cuda | hpu (pick_device happens above this)
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    max_batch: int = 64  # rows per request; more -> 422
    heartbeat_s: float = 2.0  # rank 0 pings every rank when idle this long
    step_timeout_s: float = 10.0  # a collective step longer than this: a rank is lost -> 503, exit non-zero
    collective_timeout_s: float = 30.0  # the process group's own timeout (gloo / nccl)
    stop_grace_s: float = 5.0  # a rank told to stop (SIGTERM) waits this long for rank 0's stop message

    def validate(self, world_size: int = 1) -> ServeConfig:
        check_choice("model", self.model, MODELS)
        check_choice("mode", self.mode, MODES, "use --mode tp (split every layer) or replicas (split the batch)")
        check_choice("device", self.device, DEVICE_KINDS)
        check_int("world_size", world_size, 1, "pass --world-size 1 or more")
        if self.mode == "tp":
            check_tp_size(self.model, world_size)
        if not isinstance(self.host, str) or not self.host or any(c.isspace() for c in self.host):
            raise ConfigError("host", f"{self.host!r} is not a host address", "use 127.0.0.1 (this machine) or 0.0.0.0")
        check_int("port", self.port, 1, "pass a TCP port in 1..65535 (e.g. 8000)", maximum=65535)
        check_int("max_batch", self.max_batch, 1, maximum=4096)
        for name in ("heartbeat_s", "step_timeout_s", "collective_timeout_s", "stop_grace_s"):
            check_number(name, getattr(self, name), 0.0, f"pass {name.removesuffix('_s')} seconds > 0", strict=True)
        if self.heartbeat_s >= self.collective_timeout_s:
            fix = "an idle rank's broadcast would time out between heartbeats: make heartbeat_s shorter"
            raise ConfigError("heartbeat_s", f"{self.heartbeat_s} s is not shorter than the collective timeout", fix)
        if self.step_timeout_s >= self.collective_timeout_s:
            fix = "rank 0's watchdog must fire before the process group gives up: make step_timeout_s shorter"
            problem = f"{self.step_timeout_s} s is not shorter than the collective timeout"
            raise ConfigError("step_timeout_s", problem, fix)
        return self

    @property
    def info(self):
        return model_info(self.model)

    def argv(self) -> list[str]:
        """The flags `labkit.ranks.serve` reads back into an equal ServeConfig."""
        return [part for f in fields(self) for part in (f"--{f.name.replace('_', '-')}", str(getattr(self, f.name)))]

    @classmethod
    def from_argv(cls, argv: list[str] | None) -> ServeConfig:
        parser = argparse.ArgumentParser(prog="python -m labkit.ranks.serve", description="one rank of labkit serve")
        for f in fields(cls):
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
        parser.add_argument("--local_rank", type=int, default=-1, help="set by the DeepSpeed launcher")
        values = vars(parser.parse_args(argv))
        values.pop("local_rank")
        return cls(**values)
