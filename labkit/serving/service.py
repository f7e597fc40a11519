"""The rank side of `labkit serve`: every rank holds its part of the model and joins every forward pass; rank 0 also
runs the HTTP endpoint (FastAPI + uvicorn in its main thread).

The seed this replaces served from rank 0 while every other rank sat in `dist.barrier()` for ever: those ranks could
never join a tensor-parallel forward pass, and one dead rank hung the service. Here:

- A request is checked on rank 0 before anything is broadcast (bad JSON, shape, type, NaN, batch too large -> 422):
  the other ranks never see it.
- Every collective step goes through ONE single-worker executor on rank 0: steps never interleave (two broadcasts in
  flight at once would pair one request's header with another's payload on the other ranks).
- A step is a header broadcast (op, rows, row length), then the op: PREDICT (the rows broadcast, every rank computes;
  tp: the whole batch through split layers, replicas: a share of the rows each, gathered), PING (an all-gather every
  rank must answer with its parameter count and steps taken: `/healthz?deep=1` and the heartbeat), STOP (every rank
  leaves its loop and exits 0).
- Rank 0 pings when idle for `heartbeat_s` (shorter than the group's timeout, so an idle rank's broadcast never times
  out); a watchdog answers 503 and ends rank 0 with exit code 1 when a step outlives `step_timeout_s` or fails (a
  lost rank); a worker that hears nothing for longer than the collective timeout exits 1 too. A thread stuck in a
  collective blocks a normal exit, hence `os._exit`.
- SIGTERM: rank 0's server stops accepting, finishes what it holds and broadcasts STOP; a worker keeps serving until
  that STOP arrives (at most `stop_grace_s`), so every rank stops, with exit code 0 when all of them could.
- The process that started the ranks on this machine (`OWNER_ENV`: a notebook kernel, `labkit serve`) exiting without
  a stop (killed outright) counts as SIGTERM: idle ranks write nothing, so its closed pipe would never end them.
"""

import asyncio
import contextlib
import io
import json
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from labkit.launch import RANK_ERROR_TAG, local_threads
from labkit.procs import token_gone
from labkit.ranks.runtime import init_deepspeed, say
from labkit.serving.config import OWNER_ENV, ServeConfig
from labkit.serving.models import BadRequest, as_tensor, build, check_inputs

STOP, PING, PREDICT = 0, 1, 2
MAX_BODY_BYTES = 4 * 2**20
LOST_LINGER_S = 2.0  # rank 0 keeps answering 503 this long after losing a rank, then exits 1
READY_TAG = "LABKIT_SERVE_READY"  # rank 0's line once it listens: `LABKIT_SERVE_READY {json}`


class Unavailable(RuntimeError):
    """The service cannot answer now (a rank is lost, or it is stopping): HTTP 503."""


async def read_body(request) -> bytes:
    """A request's body, refused (BadRequest) once it passes MAX_BODY_BYTES: by its Content-Length before a byte is
    read, else as it streams in (uvicorn sets no limit of its own, and a whole body read first could fill memory)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise BadRequest(f"body of {declared} bytes is larger than {MAX_BODY_BYTES}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise BadRequest(f"body is larger than {MAX_BODY_BYTES} bytes")
    return bytes(body)


def die(rank: int, why: str) -> None:
    """One tagged line (what `labkit.launch` reports), then exit 1 at once: a thread may be stuck in a collective."""
    sys.stderr.write(f"{RANK_ERROR_TAG} rank={rank} {why}\n")
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(1)


class Ranks:
    """What every rank does in one collective step (identical code on every rank, so the collectives pair up)."""

    def __init__(self, config: ServeConfig):
        import torch
        import torch.distributed as dist

        self.config, self.info, self.torch, self.dist = config, config.info, torch, dist
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        from deepspeed.accelerator import get_accelerator

        self.device = get_accelerator().current_device_name()
        self.engine = self._load()
        self.params = sum(p.numel() for p in self.engine.module.parameters())  # this rank's share
        self.steps = 0  # collective steps this rank took part in (the same on every rank, by construction)

    def _load(self):
        import deepspeed

        model, policy = build(self.config.model)
        tp = self.world if self.config.mode == "tp" else 1
        options = {"tensor_parallel": {"tp_size": tp}, "dtype": self.torch.float32, "replace_with_kernel_inject": False}
        if tp > 1:
            options["injection_policy"] = policy  # which layers AutoTP splits, and which it all-reduces
        with contextlib.redirect_stdout(io.StringIO()):  # AutoTP prints its policy
            return deepspeed.init_inference(model, **options)

    def step(self, op: int = PING, rows: list[list] | None = None):
        """One collective step; rank 0 passes the op (and rows), the others learn it from the header broadcast."""
        torch, dist = self.torch, self.dist
        header = torch.zeros(3, dtype=torch.long, device=self.device)
        if self.rank == 0:
            shape = (len(rows), len(rows[0])) if rows else (0, 0)
            header.copy_(torch.tensor([op, *shape]))
        dist.broadcast(header, 0)
        op, n, length = header.tolist()
        self.steps += 1
        if op == PING:  # [{"rank", "params", "steps"}] of every rank
            mine = torch.tensor([self.params, self.steps], dtype=torch.long, device=self.device)
            every = [torch.empty_like(mine) for _ in range(self.world)]
            dist.all_gather(every, mine)
            return [{"rank": r, "params": int(t[0]), "steps": int(t[1])} for r, t in enumerate(every)]
        if op != PREDICT:
            return None
        dtype = torch.float32 if self.info.kind == "float" else torch.long
        x = (as_tensor(self.info, rows) if self.rank == 0 else torch.empty(n, length, dtype=dtype)).to(self.device)
        dist.broadcast(x, 0)
        with torch.no_grad():
            if self.config.mode == "tp":
                return self.engine(x)  # every rank the whole batch; the split layers all-reduce inside
            share = -(-n // self.world)  # replicas: rank r computes rows [r*share, (r+1)*share), padded to equal size
            padded = torch.cat([x, x[:1].expand(share * self.world - n, *x.shape[1:])]) if share * self.world > n else x
            mine = self.engine(padded[self.rank * share : (self.rank + 1) * share]).contiguous()
            parts = [torch.empty_like(mine) for _ in range(self.world)]
            dist.all_gather(parts, mine)
            return torch.cat(parts)[:n]


def follow(ranks: Ranks) -> None:
    """A worker rank: take part in every step rank 0 starts until it says STOP."""
    config, heard = ranks.config, {"at": time.monotonic(), "term": None}

    def on_term(_signum, _frame) -> None:
        heard["term"] = heard["term"] or time.monotonic()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)

    def watchdog() -> None:  # the broadcast it waits in cannot be interrupted: exit from here
        quiet = config.collective_timeout_s + config.heartbeat_s
        while True:
            time.sleep(0.2)
            now = time.monotonic()
            if heard["term"] and now - heard["term"] > config.stop_grace_s:
                die(ranks.rank, f"stopped by SIGTERM: rank 0 sent no stop within {config.stop_grace_s:g} s")
            if now - heard["at"] > quiet:
                die(ranks.rank, f"nothing from rank 0 for {quiet:g} s (lost): exiting")

    threading.Thread(target=watchdog, daemon=True, name="serve-watchdog").start()
    while True:
        try:
            op = ranks.step()
        except Exception as exc:  # noqa: BLE001 - a peer died or the group timed out: nothing to serve any more
            die(ranks.rank, f"collective failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})")
        heard["at"] = time.monotonic()
        if op is None:  # STOP
            return


class Rank0:
    """Rank 0: the HTTP endpoint, the one executor every step goes through, the heartbeat and the watchdog."""

    def __init__(self, ranks: Ranks):
        self.ranks, self.config = ranks, ranks.config
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="serve-collective")
        self.lock = threading.Lock()
        self.broken: str | None = None  # why the service can no longer answer (a rank is lost)
        self.stopping = False
        self.stopped = False  # STOP was broadcast: every rank is leaving
        self.running_since: float | None = None  # when the step now in the executor began
        self.last_step = time.monotonic()
        self.server = None
        self.owner = os.environ.get(OWNER_ENV, "")  # empty: started by hand or in a pod, nobody to outlive

    # ---------------------------------------------------------------------------------------- collective steps
    def _run(self, op: int, rows=None):
        self.running_since = time.monotonic()
        try:
            return self.ranks.step(op, rows)
        finally:
            self.running_since, self.last_step = None, time.monotonic()

    def submit(self, op: int, rows=None):
        """Queue one step (never two at once); Unavailable once a rank is lost or STOP was sent."""
        with self.lock:
            if self.broken:
                raise Unavailable(self.broken)
            if self.stopped:
                raise Unavailable("the service is stopping")
            if op == STOP:
                self.stopped = True
            return self.executor.submit(self._run, op, rows)

    def result(self, future):
        """The step's result (blocking); a failed step means a lost rank (503 from now on, then exit 1)."""
        while True:
            try:
                return future.result(timeout=0.25)
            except TimeoutError:
                if self.broken:  # the watchdog gave up on this step
                    raise Unavailable(self.broken) from None
            except Exception as exc:  # noqa: BLE001 - a dead peer surfaces as any error of the collective
                raise self.failed(exc) from None

    async def result_async(self, future):
        """The same for the event loop: waits without a thread, wakes when the step ends or the watchdog fires."""
        waiting = asyncio.wrap_future(future)
        while not waiting.done():
            await asyncio.wait([waiting], timeout=0.25)
            if self.broken and not waiting.done():
                raise Unavailable(self.broken)
        try:
            return waiting.result()
        except Exception as exc:  # noqa: BLE001
            raise self.failed(exc) from None

    def failed(self, exc: BaseException) -> Unavailable:
        detail = str(exc).splitlines()[0][:160] if str(exc) else ""
        return Unavailable(self.broken or self.lost(f"a collective step failed ({type(exc).__name__}: {detail})"))

    def lost(self, why: str) -> str:
        """Mark the service broken (first reason wins), answer 503 for a moment, then exit 1."""
        with self.lock:
            if self.broken:
                return self.broken
            self.broken = f"a rank is lost: {why}"
        sys.stderr.write(f"{RANK_ERROR_TAG} rank=0 {self.broken}\n")
        sys.stderr.flush()
        threading.Timer(LOST_LINGER_S, die, (0, self.broken)).start()
        return self.broken

    def _watch(self) -> None:
        """The per-step watchdog and the idle heartbeat (one thread: both read the same clock; it never waits on a
        step itself, so a stuck heartbeat is caught like any other step)."""
        heartbeat, owner_checked = None, time.monotonic()
        while not self.stopped and not self.broken:
            time.sleep(0.1)
            started, now = self.running_since, time.monotonic()
            if self.owner and not self.stopping and now - owner_checked > 1.0:
                owner_checked = now
                if token_gone(self.owner):
                    self.owner_exited()
            if started is not None and now - started > self.config.step_timeout_s:
                self.lost(f"a step took longer than {self.config.step_timeout_s:g} s")
            idle = started is None and now - self.last_step > self.config.heartbeat_s
            if idle and not self.stopping and (heartbeat is None or heartbeat.done()):
                with contextlib.suppress(Unavailable):
                    heartbeat = self.submit(PING)
                    heartbeat.add_done_callback(self._heard)

    def owner_exited(self) -> None:
        """Stop as SIGTERM would: nobody is left to send /shutdown or read an answer."""
        with contextlib.suppress(OSError):  # the owner held the other end of stdout: nobody may read this line
            say("[labkit serve] the process that started this service has exited: stopping every rank")
        self.stopping = True
        if self.server is not None:
            self.server.should_exit = True

    def _heard(self, future) -> None:
        """A heartbeat's answer: every rank must have answered."""
        if future.cancelled():
            return
        if future.exception() is not None:
            self.failed(future.exception())
        elif len(future.result()) != self.ranks.world:
            self.lost(f"{len(future.result())} of {self.ranks.world} ranks answered a ping")

    def stop_ranks(self) -> bool:
        """Broadcast STOP (after whatever is queued); True when every rank got it."""
        try:
            self.result(self.submit(STOP))
            return True
        except Unavailable:
            return False

    # ---------------------------------------------------------------------------------------- HTTP
    def app(self):
        from fastapi import FastAPI, Request
        from fastapi.responses import JSONResponse

        app = FastAPI(title="labkit serve", docs_url=None, redoc_url=None, openapi_url=None)
        facts = {"model": self.config.model, "mode": self.config.mode, "world_size": self.ranks.world}
        facts["device"] = self.config.device

        def answer(code: int, **body) -> JSONResponse:
            return JSONResponse(body, status_code=code)

        async def step(op: int, rows=None):
            return await self.result_async(self.submit(op, rows))

        @app.get("/healthz")
        async def healthz(deep: int = 0):
            if self.broken or self.stopping:
                return answer(503, status="unavailable", detail=self.broken or "the service is stopping", **facts)
            if not deep:
                return answer(200, status="ok", **facts)
            start = time.perf_counter()
            try:
                ranks = await step(PING)
            except Unavailable as exc:
                return answer(503, status="unavailable", detail=str(exc), **facts)
            if len(ranks) != self.ranks.world:
                detail = self.lost(f"{len(ranks)} ranks answered a ping")
                return answer(503, status="unavailable", detail=detail, **facts)
            ping_ms = (time.perf_counter() - start) * 1e3
            return answer(200, status="ok", ranks_answered=len(ranks), ranks=ranks, ping_ms=ping_ms, **facts)

        @app.post("/predict")
        async def predict(request: Request):
            try:
                body = await read_body(request)
                try:
                    payload = json.loads(body)
                except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep to parse
                    raise BadRequest(f"body is not JSON ({type(exc).__name__}: {str(exc)[:200]})") from None
                if not isinstance(payload, dict) or "inputs" not in payload:
                    raise BadRequest('body must be a JSON object {"inputs": [[...], ...]}')
                rows = check_inputs(self.ranks.info, payload["inputs"], self.config.max_batch)
            except BadRequest as exc:
                return answer(422, detail=str(exc))
            try:
                outputs = await step(PREDICT, rows)
            except Unavailable as exc:
                return answer(503, detail=str(exc))
            return answer(200, outputs=outputs.float().cpu().tolist())

        @app.post("/shutdown")
        async def shutdown():
            if self.broken:
                return answer(503, status="unavailable", detail=self.broken)
            self.stopping = True
            try:
                ok = (await step(STOP)) is None
            except Unavailable:
                ok = False
            if self.server is not None:
                self.server.should_exit = True
            return answer(200 if ok else 503, status="stopping", ranks_stopped=ok)

        return app

    def serve(self) -> int:
        """Run the endpoint in this (main) thread until /shutdown or SIGTERM; then stop every rank. Exit code."""
        import uvicorn

        # Our handler first: uvicorn captures SIGTERM/SIGINT while it runs and re-raises them when it returns; this
        # handler turns that into "stopping" instead of the default death (which would leave the workers waiting).
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda _s, _f: setattr(self, "stopping", True))
        grace = self.config.step_timeout_s + 2
        options = {"log_level": "warning", "access_log": False, "lifespan": "off", "timeout_graceful_shutdown": grace}
        config = uvicorn.Config(self.app(), host=self.config.host, port=self.config.port, **options)
        self.server = server = uvicorn.Server(config)
        threading.Thread(target=self._watch, daemon=True, name="serve-watchdog").start()
        facts = {"url": f"http://{self.config.host}:{self.config.port}", "world_size": self.ranks.world}
        threading.Thread(target=self._announce, args=(server, facts), daemon=True).start()
        try:
            server.run()
        except SystemExit:  # uvicorn exits when it cannot bind the port
            pass
        self.stopping = True
        if not server.started:
            self.stop_ranks()
            die(0, f"could not listen on {self.config.host}:{self.config.port} (in use? pass another --port)")
        if self.broken or not (self.stopped or self.stop_ranks()):
            die(0, self.broken or "could not tell every rank to stop")
        self.executor.shutdown(wait=True)
        return 0

    def _announce(self, server, facts: dict) -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.02)
        if server.started:
            say(f"{READY_TAG} {json.dumps(facts | {'model': self.config.model, 'mode': self.config.mode})}")


def run(config: ServeConfig) -> int:
    """One rank of the service: join the group, load this rank's part of the model, serve (rank 0) or follow."""
    import torch

    if config.device == "cpu":
        torch.set_num_threads(local_threads())
    init_deepspeed(config.device, timeout_s=config.collective_timeout_s)
    ranks = Ranks(config.validate(torch.distributed.get_world_size()))
    if ranks.rank == 0:
        return Rank0(ranks).serve()
    follow(ranks)
    return 0
