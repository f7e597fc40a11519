"""labkit serve: every rank in every forward pass, answers equal to one process's, bad requests refused on rank 0,
a lost rank answered with 503 and the job ended, and every rank stopped (exit 0) by /shutdown or SIGTERM."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from kit_testing import kit_processes, wait_for_no_kit_processes, wait_until

from labkit import launch, procs
from labkit.errors import ConfigError
from labkit.serving import local, models
from labkit.serving import service as service_module
from labkit.serving.config import ServeConfig
from labkit.serving.models import BadRequest, check_inputs

REGRESSOR, TRANSFORMER = models.MODELS["regressor"], models.MODELS["transformer"]


def rows_for(info, n: int, rng: random.Random, length: int = 8) -> list[list]:
    if info.kind == "float":
        return [[rng.uniform(-3, 3) for _ in range(info.features)] for _ in range(n)]
    return [[rng.randrange(info.vocab) for _ in range(length)] for _ in range(n)]


def assert_close(got: list[list[float]], want: list[list[float]], tol: float = 1e-4) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert len(g) == len(w) and max(abs(a - b) for a, b in zip(g, w)) <= tol, (g[:4], w[:4])


# ------------------------------------------------------------------------------------------------ no ranks needed
def test_config_round_trips_through_rank_flags():
    config = ServeConfig(model="transformer", mode="replicas", port=1234, max_batch=7, heartbeat_s=1.5)
    assert ServeConfig.from_argv([*config.argv(), "--local_rank=1"]) == config


@pytest.mark.parametrize(
    "field,kwargs,world",
    [
        ("mode", {"mode": "pipeline"}, 2),
        ("model", {"model": "gpt-5"}, 2),
        ("world_size", {"mode": "tp"}, 3),  # 256 does not split in chunks of 64 over 3 ranks
        ("heartbeat_s", {"heartbeat_s": 30.0, "collective_timeout_s": 30.0}, 2),
        ("step_timeout_s", {"step_timeout_s": 40.0}, 2),
        ("port", {"port": 70000}, 2),
        ("host", {"host": ""}, 2),
        ("step_timeout_s", {"step_timeout_s": float("nan")}, 2),  # `late > nan` is never true: no watchdog
        ("stop_grace_s", {"stop_grace_s": float("inf")}, 2),  # a worker would wait for ever after SIGTERM
        ("collective_timeout_s", {"collective_timeout_s": float("inf")}, 2),  # timedelta(inf) fails in the ranks
    ],
)
def test_bad_config_is_refused_naming_the_field(field, kwargs, world):
    with pytest.raises(ConfigError) as err:
        ServeConfig(**kwargs).validate(world)
    assert err.value.field == field and "Fix:" in str(err.value)


def test_replicas_take_any_world_size():
    ServeConfig(mode="replicas").validate(3)


@pytest.mark.parametrize(
    "info,inputs,words",
    [
        (REGRESSOR, [], "non-empty list"),
        (REGRESSOR, {"a": 1}, "non-empty list"),
        (REGRESSOR, [[1.0] * 9], "has 9 values"),
        (REGRESSOR, [[1.0] * 10, "x"], "inputs[1] must be a list"),
        (REGRESSOR, [[1.0] * 9 + ["1"]], "must be a number"),
        (REGRESSOR, [[1.0] * 9 + [True]], "must be a number"),
        (REGRESSOR, [[1.0] * 9 + [float("nan")]], "finite"),
        (REGRESSOR, [[1.0] * 9 + [float("inf")]], "finite"),
        (REGRESSOR, [[1.0] * 9 + [1e39]], "finite"),
        (REGRESSOR, [[1.0] * 10] * 5, "larger than the service's limit of 4"),
        (TRANSFORMER, [[1, 2], [1, 2, 3]], "every row the same length"),
        (TRANSFORMER, [[1] * 33], "1..32 token ids"),
        (TRANSFORMER, [[1, 256]], "token id in 0..255"),
        (TRANSFORMER, [[1, 2.0]], "token id"),
    ],
)
def test_bad_inputs_are_named(info, inputs, words):
    with pytest.raises(BadRequest) as err:
        check_inputs(info, inputs, max_batch=4)
    assert words in str(err.value)


def test_a_body_is_refused_as_soon_as_it_passes_the_limit():
    """Without a Content-Length (chunked), the body streams in and is cut off past MAX_BODY_BYTES, not read whole."""
    limit, pulled = service_module.MAX_BODY_BYTES, []

    class Chunked:
        headers: dict = {}

        async def stream(self):
            for _ in range(100):  # 100 MiB on offer
                pulled.append(1)
                yield b"x" * 2**20

    with pytest.raises(BadRequest, match=f"body is larger than {limit} bytes"):
        asyncio.run(service_module.read_body(Chunked()))
    assert len(pulled) == limit // 2**20 + 1


def test_good_inputs_pass():
    assert check_inputs(REGRESSOR, [[0] * 10, [1.5] * 10], 4)
    assert check_inputs(TRANSFORMER, [[0, 255], [3, 4]], 4)


@pytest.mark.parametrize("name", list(models.MODELS))
def test_a_model_builds_the_same_weights_in_every_thread_and_leaves_the_random_state(name):
    """The chapter checks concurrent answers against reference_outputs from a thread pool: builds sharing torch's
    global generator gave other weights (max_diff 0.78 on an H100 machine)."""
    import torch

    def weights(_=None):
        return [p.detach().clone() for p in models.build(name)[0].parameters()]

    want = weights()
    torch.manual_seed(1234)
    before = torch.random.get_rng_state()
    with ThreadPoolExecutor(8) as pool:
        built = list(pool.map(weights, range(32)))
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's random numbers are its own
    assert all(torch.equal(a, b) for got in built for a, b in zip(got, want, strict=True))


@pytest.mark.parametrize(
    "model,ranks,per_rank,whole",
    [("regressor", 2, 1537, 3073), ("transformer", 2, 269_184, 466_688), ("transformer", 1, 466_688, 466_688)],
)
def test_the_params_exercise_shows_every_layer_its_answer_needs_and_explains_that_model(model, ranks, per_rank, whole):
    """`model="transformer"`: the answer (269,184 on 2 ranks) needs the embeddings, LayerNorms and head, which the
    notebook never showed, and the solution described the regressor's two layers."""
    from labkit.chapters import serving as chapter

    rows = chapter.layer_rows(model)  # what the notebook shows before the prediction: no per-rank count in it
    assert sum(r["parameters"] for r in rows) == whole and models.params_per_rank(model, ranks) == per_rank
    shown = " ".join(str(v) for r in rows for v in r.values())
    if model == "transformer":
        assert all(w in shown for w in ("tok", "pos", "ln_f", "head", "q_proj", "o_proj", "column-", "row-", "whole"))
        assert "Check the inputs" not in chapter.params_question(model, "tp", ranks)
    explanation = chapter.params_explanation(model, "tp", [{"params": per_rank}] * ranks)
    assert f"{per_rank:,}" in explanation and f"{whole:,}" in explanation
    if model == "transformer" and ranks == 2:
        assert "q_proj" in explanation and "head" in explanation and "first" not in explanation


def test_the_chapters_requests_are_timed_after_one_untimed_warm_up():
    """Notebook 07's load: on an H100 the first answer took 73 ms against 1.4 ms for the rest; timed, it became the
    sequential phase's p99 and halved its requests/s (concurrency then looked 7x faster)."""
    from labkit.chapters import serving as chapter

    class ColdClient:  # answers like one process; its first call is slow, as a fresh CUDA rank's is
        def __init__(self):
            self.calls: list[list] = []

        def predict(self, rows):
            self.calls.append(rows)
            time.sleep(0.3 if len(self.calls) == 1 else 0)
            return models.reference_outputs("regressor", rows)

    client = ColdClient()
    records = chapter.send_requests(client, "regressor", 6, 2, progress=False)
    assert len(client.calls) == 7 and all(r["input"] != client.calls[0] for r in records)
    assert [r["input"] for r in records[:3]] == client.calls[1:4]  # the sequential half, in order, after the warm-up
    assert [r["concurrent"] for r in records] == [False] * 3 + [True] * 3
    assert max(r["latency_ms"] for r in records) < 300 and max(r["max_diff"] for r in records) == 0
    rows = chapter.latency_rows(records)
    assert [r["requests"] for r in rows] == [3, 3]
    client = ColdClient()  # a service taking at most 2 rows gets at most 2 (it would answer 422 mid-run)
    chapter.send_requests(client, "regressor", 20, 2, max_batch=2, progress=False)
    assert {len(rows) for rows in client.calls} == {1, 2}


def test_plan_refuses_a_port_in_use_before_starting():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(ConfigError) as err:
            local.plan(2, "cpu", port=s.getsockname()[1])
    assert err.value.field == "port"
    # the host is checked too (also with port 0, a free one), and named as the host, not as the port
    for host, said in [("no-such-host.invalid", "does not resolve"), ("192.0.2.1", "cannot listen on 192.0.2.1")]:
        with pytest.raises(ConfigError) as err:
            local.plan(2, "cpu", host=host, port=0)
        assert err.value.field == "host" and said in err.value.problem and "0.0.0.0" in err.value.fix


def test_cli_refuses_a_ready_timeout_that_is_no_time(capsys):
    from labkit.cli import main

    for value in ("-5", "0", "nan"):
        assert main(["serve", "--world-size", "2", "--device", "cpu", "--port", "0", "--ready-timeout", value]) == 2
        assert "labkit: error: --ready-timeout: must be a" in capsys.readouterr().err


def test_cli_dry_run_prints_the_launch_command(capsys):
    from labkit.cli import main

    assert main(["serve", "--world-size", "2", "--device", "cpu", "--port", "0", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "2 x cpu rank(s)" in out and "--num_gpus 2" in out and "labkit.ranks.serve" in out
    assert main(["serve", "--world-size", "3", "--device", "cpu", "--port", "0", "--dry-run"]) == 2
    assert "--mode replicas" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ real ranks
def start(model: str = "regressor", mode: str = "tp", **options) -> local.LocalService:
    config, ranks, _ = local.plan(2, "cpu", model=model, mode=mode, **options)
    service = local.LocalService(config, ranks).start()
    try:
        service.wait_ready(240)
    except BaseException:
        service.stop()
        raise
    return service


def ranks_gone(service: local.LocalService, pids: dict[int, int], within: float) -> bool:
    return wait_until(lambda: not any(procs.alive(p) for p in pids.values()), within, 0.05)


def master_port(argv: list[str]) -> str:
    return argv[argv.index("--master_port") + 1]


@pytest.mark.slow
def test_the_command_shown_before_start_is_the_one_run_unless_its_port_was_taken():
    config, ranks, _ = local.plan(2, "cpu")
    service = local.LocalService(config, ranks)
    shown = service.command
    assert master_port(shown) != "29500"  # not DeepSpeed's default, which another job may hold
    with socket.create_server(("127.0.0.1", int(master_port(shown)))):  # taken between plan and start
        try:
            service.start().wait_ready(240)
            assert master_port(service.proc.args) == master_port(service.command) != master_port(shown)
        finally:
            service.stop()


@pytest.mark.slow
def test_tensor_parallel_answers_equal_one_process_and_bad_requests_get_422():
    rng = random.Random(7)
    service = start(max_batch=16, heartbeat_s=20.0)  # no heartbeat between the two pings below
    try:
        pids = service.rank_pids()
        assert sorted(pids) == [0, 1]
        batches = [rows_for(REGRESSOR, rng.randint(1, 8), rng) for _ in range(50)]
        answers = [service.client.predict(rows) for rows in batches[:20]]  # one after another
        with ThreadPoolExecutor(8) as pool:  # and 30 at once: the single executor keeps the broadcasts in order
            answers += list(pool.map(service.client.predict, batches[20:]))
        for rows, got in zip(batches, answers):
            assert_close(got, models.reference_outputs("regressor", rows))

        status, before = service.client.healthz(deep=True)
        bad = [
            b"{not json",
            b'{"inputs": [[1, 2, 3]]}',
            b'{"inputs": [[1, 2, 3, 4, 5, 6, 7, 8, 9, "ten"]]}',
            b'{"inputs": [[NaN, 2, 3, 4, 5, 6, 7, 8, 9, 10]]}',
            b'{"rows": []}',
            ('{"inputs": [' + ",".join(["[1,2,3,4,5,6,7,8,9,10]"] * 17) + "]}").encode(),
            b'{"inputs": [[1, 2, 3, 4, 5, 6, 7, 8, 9, 1' + b"0" * 400 + b"]]}",  # an int past float's range
            b"[" * 100_000 + b"]" * 100_000,  # nested deeper than the parser recurses (RecursionError, not 500)
            b" " * (service_module.MAX_BODY_BYTES + 1),  # over the limit by its Content-Length: never read
        ]
        for body in bad:
            status, answer = service.client.request("POST", "/predict", raw=body)
            assert status == 422 and answer["detail"], (body, status, answer)
        status, health = service.client.healthz(deep=True)
        assert status == 200 and health["ranks_answered"] == 2 and health["mode"] == "tp"
        steps = [r["steps"] for r in health["ranks"]]
        assert steps[0] == steps[1] == before["ranks"][0]["steps"] + 1, "a bad request reached the ranks"
        whole = sum(p.numel() for p in models.build("regressor")[0].parameters())
        assert [r["params"] for r in health["ranks"]][0] == health["ranks"][1]["params"] < whole * 0.6
        assert_close(service.client.predict(batches[0]), models.reference_outputs("regressor", batches[0]))

        start_stop = time.monotonic()
        status, answer = service.client.request("POST", "/shutdown")
        assert status == 200 and answer["ranks_stopped"] is True
        assert ranks_gone(service, pids, 10.0), "a rank still runs 10 s after /shutdown"
        assert time.monotonic() - start_stop < 10.5
        assert service.wait(30) == 0, service.output[-3000:]  # the launcher's 0: every rank exited 0
        assert launch.RANK_ERROR_TAG not in service.output
    finally:
        service.stop()
    assert not wait_for_no_kit_processes(), kit_processes()


@pytest.mark.slow
@pytest.mark.parametrize("model,mode", [("transformer", "tp"), ("regressor", "replicas")])
def test_other_models_and_modes_match_and_sigterm_to_rank0_stops_every_rank(model, mode):
    rng, info = random.Random(3), models.MODELS[model]
    service = start(model, mode)
    try:
        batches = [rows_for(info, n, rng, length=5) for n in (1, 2, 3, 5)]
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(service.client.predict, batches))
        for rows, got in zip(batches, answers):
            assert_close(got, models.reference_outputs(model, rows))
        pids = service.rank_pids()
        os.kill(pids[0], signal.SIGTERM)  # what a pod's shutdown sends: rank 0 stops the others
        assert ranks_gone(service, pids, 10.0)
        assert service.wait(30) == 0, service.output[-3000:]
    finally:
        service.stop()
    assert not wait_for_no_kit_processes(), kit_processes()


@pytest.mark.slow
def test_a_killed_rank_gives_503_and_the_job_ends():
    service = start(heartbeat_s=1.0, step_timeout_s=5.0, collective_timeout_s=10.0)
    statuses: list[tuple[float, int, str]] = []
    halt = threading.Event()

    def hammer() -> None:
        client = local.HttpClient(service.url, timeout=20)
        while not halt.is_set():
            try:
                status, body = client.request("POST", "/predict", {"inputs": [[0.5] * 10]})
            except OSError:
                status, body = -1, {}
            statuses.append((time.monotonic(), status, body.get("detail", "")))
            if status == -1:
                time.sleep(0.05)

    threads = [threading.Thread(target=hammer, daemon=True) for _ in range(4)]
    try:
        for t in threads:
            t.start()
        assert wait_until(lambda: sum(s == 200 for _, s, _ in statuses) >= 20, 30)
        killed_at = time.monotonic()
        os.kill(service.rank_pids()[1], signal.SIGKILL)
        code = service.wait(30)  # TimeoutError if the job outlives 30 s
        assert code != 0 and time.monotonic() - killed_at < 30
        halt.set()
        for t in threads:
            t.join(25)
        after = [(s, d) for at, s, d in statuses if at > killed_at]
        assert any(s == 503 and "rank is lost" in d for s, d in after), after[:10]
        assert all(s in (200, 503, -1) for s, _ in after), after  # never a wrong answer, never a hang
        assert service.failure() == "rank 1 died (killed by signal 9); the other ranks were stopped", service.failure()
    finally:
        halt.set()
        service.stop()
    assert not wait_for_no_kit_processes(), kit_processes()


def serving_cli(port: int, *where: str) -> tuple[subprocess.Popen, list[str]]:
    """`labkit serve` on 2 CPU ranks unless `where` says, once serving (its lines keep coming into the list)."""
    where = where or ("--world-size", "2", "--device", "cpu")
    argv = [sys.executable, "-m", "labkit", "serve", *where, "--port", str(port)]
    cli = subprocess.Popen(argv, env=launch.kit_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(cli.stdout), daemon=True)
    reader.start()
    serving = lambda: any(line.startswith("serving http") for line in lines)  # noqa: E731
    wait_until(lambda: serving() or cli.poll() is not None, 240)  # a CLI that ended says why at once
    if cli.poll() is not None:
        reader.join(5)  # every line it printed, for the message below
        procs.stop_tree(cli)
    assert serving(), "".join(lines)
    return cli, lines


@pytest.mark.slow
def test_cli_serves_in_the_foreground_until_sigterm():
    port = launch.free_port()
    cli, lines = serving_cli(port)
    try:
        client = local.HttpClient(f"http://127.0.0.1:{port}")
        rows = [[1.0] * 10]
        assert_close(client.predict(rows), models.reference_outputs("regressor", rows))
        cli.send_signal(signal.SIGTERM)
        assert cli.wait(45) == 0, "".join(lines)
        wait_until(lambda: "every rank exited 0" in "".join(lines), 5)
        assert "every rank exited 0" in "".join(lines)
    finally:
        if cli.poll() is None:
            procs.stop_tree(cli)
    assert not wait_for_no_kit_processes(), kit_processes()


@pytest.mark.slow
def test_ranks_whose_starter_is_killed_outright_stop_by_themselves():
    """SIGKILL runs no exit path (a notebook kernel killed at a deadline, `labkit serve` under `kill -9`): the idle
    ranks write nothing, so its closed pipe would never end them. Rank 0 sees its starter gone and stops them all. The
    automatic ranks: one per GPU on a GPU machine, where notebook 07's ranks are CUDA ones."""
    cli, lines = serving_cli(launch.free_port(), "--world-size", "0", "--device", "auto")
    ranks = [pid for pid, _ in kit_processes() if pid != cli.pid]
    assert ranks, "".join(lines)
    cli.kill()
    cli.wait()
    try:
        assert wait_until(lambda: not any(procs.alive(p) for p in ranks), 30), kit_processes()
    finally:
        for pid in ranks:  # what the fix missed must not outlive the test
            procs.send(os.kill, pid, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.parametrize("second_after", [None, 0.3], ids=["one-ctrl-c", "two-ctrl-c"])
def test_ctrl_c_while_the_ranks_load_stops_them_all_and_says_so(second_after):
    """^C before the service is ready: nobody listens for /shutdown, so the ranks are stopped at once (not after a
    30 s wait), and a second ^C during that stop still stops them (the ranks run in a session of their own)."""
    cli = [sys.executable, "-c", "import sys; from labkit.cli import main; sys.exit(main())"]
    proc = subprocess.Popen([*cli, "serve", "--world-size", "2", "--device", "cpu", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        assert wait_until(lambda: len(kit_processes()) >= 3, 60), "the ranks did not start"
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        if second_after is not None:
            time.sleep(second_after)
            proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=60)[0]
        assert proc.returncode == 130 and "labkit: interrupted" in output and "Traceback" not in output, output
        assert time.monotonic() - started < 15
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not wait_for_no_kit_processes(), kit_processes()
