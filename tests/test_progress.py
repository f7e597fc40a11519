"""labkit.progress: what a bar shows in a pipe and what its rate counts."""

from __future__ import annotations

import io

from labkit import progress


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_bars_rate_counts_steps_from_the_first_one_not_the_start_up():
    """Notebook 05's bar read '3/3 [00:25<00:00, 4.37s/step]' beside a measured median step of 975 ms: the ranks'
    launch and start-up were spread over the steps. Here start-up takes 20 s and each step 2 s."""
    out, clock = io.StringIO(), Clock()
    bar = progress.bar(3, desc="probe", file=out, mininterval=0)
    bar._time = clock
    bar.start_t = bar.last_print_t = clock()
    try:
        for at in (20.0, 22.0, 24.0):
            clock.now = at
            progress.advance(bar)
        assert "3/3" in str(bar) and "2.00s/step" in str(bar), str(bar)
    finally:
        bar.close()


def test_a_bar_in_a_pipe_writes_whole_lines_and_said_lines_stay_apart(capsys):
    """A rank's bar goes through a pipe into a notebook: tqdm's '\\r' redraws became line breaks there and a line
    printed meanwhile ran into the bar ('loss=1.527]epoch 1/3 ...')."""
    out = io.StringIO()
    bar = progress.bar(2, desc="steps", file=out, mininterval=0)
    bar.update(1)
    progress.say("epoch 1/2 done")
    bar.update(1)
    bar.close()
    lines = out.getvalue().split("\n")
    assert lines[-1] == "" and all(line.startswith("steps: ") for line in lines[:-1]), lines
    assert "\r" not in out.getvalue() and len(lines[:-1]) == len(set(lines[:-1]))  # no repeated redraws
    assert capsys.readouterr().out == "epoch 1/2 done\n"


def test_a_bar_without_a_rate_shows_progress_and_time_only():
    """Where the steps counted are a rank's output lines (zero, accelerate_route), their pace is not the step time
    the chapter measures: notebook 05's bar said 3.17 s/step beside a measured median step of 459 ms."""
    bar = progress.bar(3, desc="ZeRO comparison", file=io.StringIO(), mininterval=0, rate=False)
    try:
        bar.set_postfix_str("ZeRO 3", refresh=False)
        bar.update(3)
        shown = str(bar)
        assert "3/3" in shown and "ZeRO 3" in shown and "/s" not in shown and "s/step" not in shown, shown
    finally:
        bar.close()
