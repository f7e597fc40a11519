"""The exercises' one comparison and the answers the chapters compute for them."""

from __future__ import annotations

import pytest

from labkit import devices, zero
from labkit.chapters import exercises
from labkit.errors import ConfigError


def test_an_unanswered_exercise_asks_for_the_named_prediction():
    assert "set `my_steps` above" in exercises.verdict(None, 30, name="my_steps")


@pytest.mark.parametrize(
    "prediction,answer,tol,word,off",
    [
        (30, 30, 0.0, "right", ""),
        (31, 30, 0.0, "not yet", "(+3%)"),
        (105, 100, 0.1, "right", ""),
        (80, 100, 0.1, "not yet", "(-20%)"),
        (2.5, 2.5, 0.0, "right", ""),
    ],
)
def test_the_verdict_compares_within_the_tolerance(prediction, answer, tol, word, off):
    line = exercises.verdict(prediction, answer, name="x", rel_tol=tol)
    assert f"**{word}**" in line and off in line and f"the answer: {exercises._num(answer)}" in line


def test_a_prediction_that_is_not_a_number_names_the_variable():
    with pytest.raises(ConfigError) as e:
        exercises.verdict("four", 4, name="my_auto_ranks")
    assert e.value.field == "my_auto_ranks"


def test_the_exercise_reads_the_largest_device_whose_memory_is_known():
    """nvidia-smi answers [N/A] on some boards (a GB10): notebook 01 failed in its exercise cell on None // 16."""
    cpu = devices.Device("cpu", 0, "CPU", 64 * 2**30)
    unknown = devices.Device("cuda", 0, "NVIDIA GB10", None, source="nvidia-smi")
    assert exercises.largest_device([unknown, cpu]) is cpu
    h100 = devices.Device("cuda", 1, "NVIDIA H100", 80 * 2**30)
    assert exercises.largest_device([unknown, h100, cpu]) is h100  # an accelerator first, even with less than RAM


def test_answers_follow_the_machine_and_the_papers_16_bytes(monkeypatch):
    assert exercises.trainable_params_answer(141 * 10**9) == 8_812_500_000  # an H200's 141 GB / 16
    monkeypatch.setattr(devices, "cuda_status", lambda: (False, "hidden"))
    monkeypatch.setattr(devices, "hpu_status", lambda: (False, "hidden"))
    ranks, device, why = exercises.automatic_ranks_answer()
    assert (ranks, device) == (2, "cpu") and "no GPU here" in why
    # the ZeRO chapters' own words (chapter 00 said 'the lesson needs 2 ranks' where 02 says why ZeRO needs them)
    assert (
        why.endswith("ZeRO needs 2 or more ranks to partition model states")
        and f"automatic: {why}" == (zero.auto_ranks(0)[2])
    )


def test_the_chapters_checks_do_not_give_the_answer_away_before_a_prediction():
    from labkit.chapters import accelerate, serving

    ranks = [{"params": 1537}, {"params": 1537}]
    question = serving.params_question("regressor", "tp", 1)  # a 1-GPU machine's run: the question says 1 rank
    assert "over **1** rank(s)" in question and "tp" in question and "3,073" not in question
    assert "table above" in serving.params_question("transformer", "tp", 2)  # its layers, not the regressor's
    assert "1,537" not in serving.check_params_prediction(ranks, None)
    assert "**right**" in serving.check_params_prediction(ranks, 1537)
    assert "**not yet**" in serving.check_params_prediction(ranks, 3073)
    rank = {"memory": {"step": {"device": {"optimizer_states": 1_378_820}}}, "params": 344_704, "world_size": 2}
    report = {"ranks": [rank | {"check": {"zero_stage": 2}}]}
    assert "1,378" not in accelerate.check_moments_prediction(report, None)
    right = accelerate.check_moments_prediction(report, 1_378_816)
    assert "**right**" in right and "8 bytes x 344,704 parameters / 2 rank(s) = 1,378,816" in right
    assert "**not yet**" in accelerate.check_moments_prediction(report, 2 * 1_378_816)
    # ZeRO-0 splits nothing: the moments are whole on each rank, and the solution cell's answer says so
    whole = {
        "ranks": [rank | {"check": {"zero_stage": 0}, "memory": {"step": {"device": {"optimizer_states": 2_757_716}}}}]
    }
    assert accelerate.expected_moments(whole["ranks"][0]) == 2_757_632
    right = accelerate.check_moments_prediction(whole, accelerate.expected_moments(whole["ranks"][0]))
    assert "**right**" in right and "(ZeRO-0: whole on every rank) = 2,757,632" in right
    assert "whole on every rank: ZeRO-0" in accelerate.states_split("bf16", 0, 2)
    assert accelerate.states_split("bf16", 2, 1).endswith("whole on every rank: ZeRO-2 has one rank to split over")
    assert accelerate.states_split("bf16", 1, 2).startswith("bf16 parameters whole on every rank; fp32 master")


def test_the_seed_comparison_speaks_of_other_ranks_only_where_there_are_some():
    from labkit.chapters import serving
    from labkit.serving.config import ServeConfig

    records = [{"max_diff": 1e-7}]
    for n, params in ((1, 3073), (2, 1537)):
        health = {"world_size": n, "ranks": [{"steps": 62, "params": params}] * n}
        rows = {r["question"]: r for r in serving.seed_comparison(health, ServeConfig(), records, 422)}
        seed = rows["ranks in each forward pass"]["seed (barrier)"] + rows["parameters on each rank"]["seed (barrier)"]
        assert ("the others" in seed) == (n > 1), seed  # a 1-GPU run has one rank: no others to wait or idle
        assert rows["ranks in each forward pass"]["this service"].startswith(f"{n} of {n}: 62 collective steps")


@pytest.mark.parametrize(
    "sequential,concurrent,words",
    [
        ((1.37, 187.1), (5.43, 695.1), "(3.7x): the HTTP work around each request"),  # 1 x H200, 2026-12-05
        ((1.85, 375.0), (11.1, 355.6), "(0.9x), about the same: the collective steps"),  # 2 CPU ranks, the same day
        ((2.0, 400.0), (30.0, 120.0), "(0.3x): the clients competed with the ranks"),
    ],
)
def test_the_latency_sentence_says_what_concurrency_did_in_this_run(sequential, concurrent, words):
    """07 said requests/s 'stay about the same' under concurrency; on the H200 they rose 3.7x."""
    from labkit.chapters import serving

    rows = [{"p50_ms": p50, "requests_per_s": rate} for p50, rate in (sequential, concurrent)]
    note = serving.latency_note(rows, 4)
    assert words in note and f"took {concurrent[0]} ms against {sequential[0]} ms" in note
    assert serving.latency_note(rows[:1], 4) == "Only one phase ran: nothing to compare."


def test_the_accelerate_chapter_closes_with_its_own_runs_numbers():
    from labkit.chapters import accelerate

    counted = {"params": 689_408, "master_params": 1_378_816, "gradients": 4, "optimizer_states": 2_757_632}
    rank = {"world_size": 1, "check": {"engine": "DeepSpeedEngine", "zero_stage": 2}, "losses": [4.19, 0.5, 0.012]}
    rank |= {"generated": [7, 8, 9, 11], "expected": [7, 8, 9, 10], "rank": 0}
    rank["memory"] = {"step": {"device": counted | {"buffers": 0}}}
    report = {"device": "cuda", "ranks": [rank]}
    advice = {"rule_stage": 2, "holds": True, "best": "ZeRO-1"}
    lines = accelerate.closing_lines(report, advice, "7B in bf16 on 8 x H100")
    assert lines[0].startswith("`accelerate launch` started 1 rank(s) on cuda; each verified a DeepSpeedEngine at")
    assert lines[1] == "The loss fell from 4.19 to 0.012 in 3 steps, and the trained model continued the count for 3 " \
        "of 4 tokens."  # fmt: skip
    assert lines[2].startswith("Rank 0 held 4.83 MB of model states and 0 B of DeepSpeed buffers: none was alive")
    assert lines[3] == "For 7B in bf16 on 8 x H100, the guide's ZeRO-2 fits; the fastest variant that fits is ZeRO-1."
    assert "does not fit" in accelerate.closing_lines(report, advice | {"holds": False, "best": None}, "x")[3]
    one = {**report, "ranks": [rank | {"losses": [4.19]}]}
    assert " in 1 step, " in accelerate.closing_lines(one, advice, "x")[1]  # not "in 1 steps"


def test_the_serving_chapter_closes_with_its_own_runs_numbers():
    from labkit.chapters import serving

    served = {"model": "regressor", "mode": "tp", "world_size": 2, "device": "cpu", "requests": 60, "max_diff": 1.2e-7}
    served |= {"bad_status": 422, "health_after_bad": 200, "exit_code": 0}
    served["ranks"] = [{"steps": 62, "params": 1537}, {"steps": 62, "params": 1537}]
    latency = [{"p50_ms": 1.85, "p99_ms": 7.74, "requests_per_s": 375.0}]
    latency.append({"p50_ms": 11.1, "p99_ms": 15.8, "requests_per_s": 355.6})
    lines = serving.closing_lines(served, latency, 4)
    assert lines[0] == (
        "2 cpu rank(s) served `regressor` (tp); every rank took part in all 62 collective steps (the same count on "
        "every rank), each holding 1,537 parameters."
    )
    assert lines[1] == "60 answers matched one process's to within 1.2e-07."
    assert "p50 1.85 ms, p99 7.74 ms (375.0 requests/s); 4 clients at once: p50 11.1 ms" in lines[2]
    assert "HTTP 422 from rank 0 and the service stayed healthy (deep health check: HTTP 200)" in lines[3]
    assert lines[4].endswith("exit code was 0 (every rank exited 0).")
    broken = served | {"health_after_bad": 503, "exit_code": 1, "ranks": [{"steps": 62, "params": 1}, {"steps": 61}]}
    lines = serving.closing_lines(broken, latency, 4, failure="rank 1 failed: killed by SIGKILL")
    assert "NOT equal: [62, 61]" in lines[0] and "was NOT healthy after it (deep health check: HTTP 503)" in lines[3]
    assert lines[4].endswith("exit code was 1: rank 1 failed: killed by SIGKILL.")


@pytest.mark.parametrize("prediction", [True, False, float("nan"), float("inf")])
def test_a_bool_or_a_non_finite_prediction_is_refused_like_any_non_number(prediction):
    """True scored as 1 (a world size of 1: 'right'); errors.is_number refuses bools everywhere else."""
    with pytest.raises(ConfigError) as e:
        exercises.verdict(prediction, 1, name="my_world_size")
    assert e.value.field == "my_world_size" and "not a number" in e.value.problem and "my_world_size = " in e.value.fix


def test_a_near_miss_shows_the_digits_that_differ():
    """1.9999999 against 2 read 'Your prediction: 2.00; the answer: 2 (-0%): not yet'."""
    line = exercises.verdict(1.9999999, 2, name="x")
    assert "**not yet**" in line and "Your prediction: 1.9999999; the answer: 2.0000000" in line
    assert "(-0%)" not in line and "0.0001%)" in line
    close = exercises.verdict(0.132, 0.132352, name="x", rel_tol=0.05)  # below 1: 3 significant digits, not 0.13
    assert close.startswith("Your prediction: 0.132; the answer: 0.132: **right**")


def test_a_solution_states_the_answer_and_why_without_a_prediction_the_learner_never_made():
    """A solution cell once read 'Your prediction: 2; the answer: 2: right.' while my_min_devices was None."""
    line = exercises.solution(1_378_820, unit=" bytes", then="rank 0 counted them.")
    assert line == "The answer: 1,378,820 bytes. rank 0 counted them."
    assert exercises.solution(None, none="none", then="ZeRO-0 keeps all.") == "The answer: none. ZeRO-0 keeps all."


def test_the_buffer_sentence_heeds_the_allocator_peak_of_a_gpu_run():
    """1 x H100: 0 B of buffers counted after the step beside a 1.08 GB allocator peak read 'no reduction buffer was
    allocated', though DeepSpeed's reduction bucket had come and gone in the backward pass."""
    from labkit.chapters import accelerate

    counted = {"params": 689_408, "master_params": 1_378_816, "gradients": 4, "optimizer_states": 2_757_632}
    rank = {"world_size": 1, "check": {"engine": "DeepSpeedEngine", "zero_stage": 2}, "losses": [4.19, 0.012]}
    rank |= {"generated": [7], "expected": [7], "rank": 0, "params": 344_704, "step_times_s": [0.5, 0.013]}
    rank["memory"] = {"step": {"device": counted | {"buffers": 0}}, "accelerator": {"peak_allocated": 1_080_000_000}}
    report = {"device": "cuda", "ranks": [rank]}
    advice = {"rule_stage": 2, "holds": True, "best": "ZeRO-1", "text": "-"}
    states = sum(counted.values())
    line = accelerate.closing_lines(report, advice, "x")[2]
    assert "no reduction buffer was allocated" not in line
    assert f"the allocator peaked at 1.08 GB, {1_080_000_000 / states:.0f}x the model states" in line
    assert "frees its gradient-reduction buckets after each backward" in line  # why the count shows none
    assert "(everything alive at once: states, activations and those buckets)" in line  # not all of it buckets
    cpu = rank | {"memory": {"step": {"device": counted | {"buffers": 0}}, "accelerator": {}}}
    cpu_line = accelerate.closing_lines({"device": "cpu", "ranks": [cpu]}, advice, "x")[2]
    assert "allocator" not in cpu_line and "no reduction buffer was allocated" not in cpu_line


def test_the_latency_histogram_is_a_described_lab_figure():
    """07's latency histogram was the one figure of notebooks 00-07 drawn through pyplot: a bare Figure whose text was
    '<Figure size 750x360 with 1 Axes>', where every other figure describes its data."""
    from labkit.chapters import serving

    records = [{"latency_ms": ms, "concurrent": False} for ms in (0.9, 0.94, 1.0, 10.2)]
    records += [{"latency_ms": ms, "concurrent": True} for ms in (2.3, 2.38, 2.4, 3.3)]
    fig = serving.latency_figure(records, "regressor, tp, 1 x cuda: request latency")
    bundle, metadata = fig._repr_mimebundle_()
    assert bundle["text/plain"] == metadata["image/png"]["alt"] == fig.alt
    assert fig.alt.startswith("Histogram: regressor, tp, 1 x cuda: request latency, 8 requests;")
    assert "one after another p50 0.97 ms" in fig.alt and "concurrent p50 2.39 ms" in fig.alt
    assert f"all: p50 {serving.percentile([r['latency_ms'] for r in records], 50):.2f} ms" in fig.alt
