"""A service on this machine, and an HTTP client for any service: what `labkit serve`, notebook 07, the tests and the
benchmark use.

`LocalService` starts the ranks through the DeepSpeed launcher in a session of its own (SIGTERM to the launcher
alone leaves ranks running), waits until rank 0 answers `/healthz`, and on every exit path stops the whole process
tree: gracefully first (`POST /shutdown`: every rank exits 0), then `procs.stop_tree`. A process killed outright
runs no exit path: rank 0 watches the one that started it (`OWNER_ENV`) and stops every rank when it is gone.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import json
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from labkit import launch
from labkit.devices import auto_ranks, check_ranks_fit, pick_device
from labkit.errors import ConfigError, LabkitError, LaunchError, check_int
from labkit.procs import RankExits, process_token, rank_processes, stop_tree
from labkit.serving.config import OWNER_ENV, SERVE_MODULE, ServeConfig
from labkit.serving.service import READY_TAG


class ServeError(LabkitError):
    """A request the service answered with an error status (the status and the service's own words)."""

    def __init__(self, status: int, detail: str):
        self.status, self.detail = status, detail
        super().__init__(f"HTTP {status}: {detail}")


def plan(world_size: int = 0, device: str = "auto", **options) -> tuple[ServeConfig, int, str]:
    """(validated config, ranks, why that many) for a local service; ConfigError before anything starts.
    world_size 0: automatic (one rank per GPU, else 2 CPU ranks); port 0: a free one."""
    check_int("world_size", world_size, 0, "pass 0 (automatic) or 1 or more ranks")
    picked = pick_device(device)
    if world_size:
        ranks, why = check_ranks_fit("world_size", world_size, picked), "as requested"
    else:
        ranks, picked, why = auto_ranks(device)
    port = options.pop("port", 0)
    check_int("port", port, 0, "pass a TCP port in 1..65535, or 0 for a free one", maximum=65535)
    config = ServeConfig(device=picked, port=port or launch.free_port(), **options).validate(ranks)
    check_port_free(config.host, port)  # port 0 (a free one): the host alone
    return config, ranks, why


class HttpClient:
    """JSON over HTTP/1.1 with one keep-alive connection per thread (concurrent callers do not share one)."""

    def __init__(self, url: str, timeout: float = 30.0):
        parts = urlsplit(url)
        self.url, self.host, self.port, self.timeout = url, parts.hostname, parts.port or 80, timeout
        self._local = threading.local()

    def request(self, method: str, path: str, body=None, *, raw: bytes | None = None) -> tuple[int, dict]:
        """(status, JSON body); a dropped keep-alive connection is retried once on a fresh one."""
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        headers = {"Content-Type": "application/json"} if data is not None else {}
        for attempt in (1, 2):
            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                conn.request(method, path, body=data, headers=headers)
                response = conn.getresponse()
                return response.status, _json_or_text(response.read())
            except (ConnectionError, http.client.HTTPException) as exc:
                self.close()
                if attempt == 2 or isinstance(exc, ConnectionRefusedError):
                    raise
        raise AssertionError("unreachable")

    def predict(self, rows: list[list]) -> list[list[float]]:
        status, body = self.request("POST", "/predict", {"inputs": rows})
        if status != 200:
            raise ServeError(status, body.get("detail", str(body)))
        return body["outputs"]

    def healthz(self, deep: bool = False) -> tuple[int, dict]:
        return self.request("GET", "/healthz?deep=1" if deep else "/healthz")

    def close(self) -> None:
        if getattr(self._local, "conn", None) is not None:
            self._local.conn.close()
            self._local.conn = None


def _json_or_text(text: bytes) -> dict:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {"detail": text.decode(errors="replace")[:500]}
    return value if isinstance(value, dict) else {"detail": value}


class LocalService:
    """The ranks of one service on this machine. `with LocalService(config, ranks).start() as svc:` stops them all."""

    def __init__(self, config: ServeConfig, world_size: int, *, on_output: Callable[[str], None] | None = None):
        self.config, self.world_size, self.on_output = config.validate(world_size), world_size, on_output
        args = {"args": config.argv(), "world_size": world_size, "device": config.device}
        self.spec = launch.LaunchSpec(module=SERVE_MODULE, **args)
        self.proc: subprocess.Popen | None = None
        self.chunks: list[str] = []
        self.ready: dict | None = None
        self.url = f"http://{'127.0.0.1' if config.host in ('0.0.0.0', '::') else config.host}:{config.port}"
        self.client = HttpClient(self.url)
        self._reader: threading.Thread | None = None
        self._port = launch.free_port()  # the rendezvous port: chosen now, so `command` shows what start() runs
        self._exits: RankExits | None = None  # which rank failed first: a killed one says nothing itself

    @property
    def command(self) -> list[str]:
        """The launcher's argv as a user types it."""
        return launch.shown_command(launch.build_command(self.spec, master_port=self._port))

    def start(self) -> LocalService:
        self.spec.validate()
        try:
            check_port_free("127.0.0.1", self._port)
        except ConfigError:  # taken since (or by the last start): another free one
            self._port = launch.free_port()
        argv = launch.build_command(self.spec, master_port=self._port)
        env = {**launch.local_env(self.spec, self._port), OWNER_ENV: process_token()}  # the ranks end with us
        self.proc = launch.start_session(argv, env)
        self._exits = RankExits(self.proc.pid).start()
        self._reader = threading.Thread(target=self._pump, daemon=True, name="serve-output")
        self._reader.start()
        return self

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.chunks.append(line)
            if line.startswith(READY_TAG):
                self.ready = json.loads(line[len(READY_TAG) :])
            if self.on_output:
                self.on_output(line)

    @property
    def output(self) -> str:
        return "".join(self.chunks)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rank_pids(self) -> dict[int, int]:
        """{rank: pid} of the rank processes running now."""
        return {rank: pid for pid, rank in rank_processes(self.proc.pid).items()} if self.proc else {}

    def failure(self) -> str:
        """One line on why the ranks ended (the failing rank and its error)."""
        first = self._exits.first_failure if self._exits else None
        return launch.describe_failure(self.output, self.proc.returncode if self.proc else None, first_failure=first)

    def wait_ready(self, timeout: float = 180.0) -> dict:
        """Block until rank 0 answers /healthz (every rank has loaded its part); LaunchError if the ranks end first,
        TimeoutError (after stopping them) if that takes longer than `timeout` seconds."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if not self.running:
                self._join_reader()
                why = f"the service ended before it was ready: {self.failure()}"
                raise LaunchError(why, output=self.output[-8000:])
            if self.ready is not None:
                with contextlib.suppress(OSError):  # not listening yet
                    status, body = self.client.healthz()
                    if status == 200:
                        return body
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"the service was not ready after {timeout:g} s (every rank stopped; --ready-timeout)")

    def wait(self, timeout: float | None = None) -> int:
        """The launcher's exit code (0: every rank exited 0); TimeoutError after `timeout` seconds."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"the service still runs after {timeout:g} s") from None
        self._join_reader()
        return code

    def shutdown(self, timeout: float = 30.0) -> int:
        """POST /shutdown (every rank leaves its loop and exits 0) and wait for the launcher (which exits a few
        seconds after its ranks); stop_tree if it overstays `timeout`. The launcher's exit code."""
        if self.running:
            try:
                self.client.request("POST", "/shutdown")
            except OSError:  # nobody listens (still loading, or already going): no graceful exit to wait long for
                timeout = min(timeout, 2.0)
            try:
                return self.wait(timeout)
            except TimeoutError:
                self.stop()
        return self.proc.returncode if self.proc else 0

    def close(self, timeout: float = 30.0) -> int:
        """shutdown(), then stop() whatever happens (a second ^C while shutdown waits included): the exit code."""
        try:
            return self.shutdown(timeout)
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop every process of the service now (the launcher's group and every descendant)."""
        if self.proc is not None:
            stop_tree(self.proc)
            self._join_reader()
        self.client.close()

    def _join_reader(self) -> None:
        if self._exits is not None:  # the launcher has exited or been stopped: no rank is left to watch
            self._exits.stop()
        if self._reader is not None:
            self._reader.join(timeout=5)

    def __enter__(self) -> LocalService:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_port_free(host: str, port: int) -> None:
    """ConfigError now, before ranks spend their start-up: naming `host` when it is no address of this machine (or
    does not resolve), `port` when something already listens there. Port 0 checks the host alone."""
    fix = "use 127.0.0.1 (this machine only), 0.0.0.0 (every interface) or an address of this machine"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise ConfigError("host", f"{host!r} does not resolve ({exc.strerror})", fix) from None
    with socket.socket(family, kind, proto) as s:
        try:
            s.bind(address)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise ConfigError("host", f"cannot listen on {host} ({exc.strerror})", fix) from None
            raise ConfigError("port", f"{host}:{port} is not free ({exc.strerror})", "pass another --port") from None
