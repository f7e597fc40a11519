"""The chapters' predict-then-verify exercises: the learner writes a number before a cell computes it, and a checking
cell compares the two. `verdict` is the one comparison every exercise uses; the other functions compute each
chapter's true answer from this machine or this run (notebooks 02 and 05 keep theirs in their chapter modules)."""

from __future__ import annotations

import math

from labkit import memory, zero
from labkit.errors import ConfigError
from labkit.tabular import format_percent


def verdict(
    prediction: float | str | None,
    answer: float | None,
    *,
    name: str,
    unit: str = "",
    rel_tol: float = 0.0,
    then: str = "",
    none: str = "",
) -> str:
    """One Markdown line: the learner's prediction against the answer ('right' within rel_tol, exact when 0), and
    `then` (why the answer is what it is) once there is a prediction. `none`: the word (e.g. "none") a learner writes
    when no number answers; an answer of None is that word."""
    if prediction is None:
        other = f' (or "{none}" if no number does)' if none else ""
        return f"**Exercise:** set `{name}` above to your prediction{other} and run this cell again."
    if none and isinstance(prediction, str) and prediction.strip().lower() == none:
        value = None
    else:
        try:  # True is an int to Python, never a prediction (errors.is_number); nan and inf compare as nothing
            value = float(prediction) if not isinstance(prediction, bool) else math.nan
        except (TypeError, ValueError):
            value = math.nan
        if not math.isfinite(value):
            fix = f"write a number, e.g. {name} = 4" + (f', or "{none}"' if none else "")
            raise ConfigError(name, f"{prediction!r} is not a number", fix)
    if value is None or answer is None:  # "none" is right only against no number
        right, off = value is None and answer is None, ""
    else:
        error = value / answer - 1 if answer else float(value != answer)
        right = abs(value - answer) <= rel_tol * abs(answer) if rel_tol else value == answer
        off = f" ({'+' if error > 0 else ''}{format_percent(error)})" if answer and not right else ""
    word = "right" if right else "not yet"
    shown, truth = (_num(value, none), _num(answer, none)) if right else _nums(value, answer, none)
    line = f"Your prediction: {shown}{unit if value is not None else ''}; "
    line += f"the answer: {truth}{unit if answer is not None else ''}{off}: **{word}**."
    return f"{line} {then}" if then else line


def solution(answer: float | None, *, unit: str = "", then: str = "", none: str = "") -> str:
    """A solution cell's line: the answer and why, with no verdict (the learner's prediction is the exercise cell's)."""
    line = f"The answer: {_num(answer, none)}{unit if answer is not None else ''}."
    return f"{line} {then}" if then else line


def _num(x: float | None, none: str = "") -> str:
    """Whole numbers without decimals; others with 2, or 3 significant digits below 1 (0.132, not 0.13); None as
    the `none` word."""
    if x is None:
        return none
    if float(x).is_integer():
        return f"{x:,.0f}"
    return f"{x:,.{max(2, 2 - math.floor(math.log10(abs(x))))}f}"


def _nums(value: float | None, answer: float | None, none: str = "") -> tuple[str, str]:
    """Both numbers as `_num` writes them, or with as many decimals as tell them apart where `_num` would show one
    number twice beside 'not yet' (1.9999999 against 2: '2.00' and '2')."""
    shown, truth = _num(value, none), _num(answer, none)
    if value is None or answer is None or value == answer:
        return shown, truth
    if float(shown.replace(",", "")) != float(truth.replace(",", "")):
        return shown, truth
    digits = next((d for d in range(3, 16) if f"{value:.{d}f}" != f"{answer:.{d}f}"), 16)
    return f"{value:,.{digits}f}", f"{answer:,.{digits}f}"


def automatic_ranks_answer() -> tuple[int, str, str]:
    """Notebook 00: (ranks, device, why) that world_size=0 gives the ZeRO chapters here: their own answer
    (zero.automatic_ranks), so chapter 00 says what 02 and 05 will print."""
    return zero.automatic_ranks()


def largest_device(devices: list):
    """The device notebook 01's exercise reads: the accelerator with the most memory among those whose memory is known
    (nvidia-smi may answer [N/A], Gaudi's memory stats may be unreadable), else the CPU."""
    known = [d for d in devices if d.mem_total]
    return max([d for d in known if d.kind != "cpu"] or known, key=lambda d: d.mem_total)


def trainable_params_answer(device_bytes: int) -> int:
    """Notebook 01: the largest model trainable by plain data parallelism (ZeRO-0, bf16 mixed precision, Adam) whose
    model states fit in `device_bytes`, activations ignored: the paper's 16 bytes per parameter."""
    return int(device_bytes // memory.paper_model_states(1, 0, 1, "bf16")["total"])
