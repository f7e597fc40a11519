"""Regression suites: which notebooks to run, with which parameters, and what their recorded results must satisfy.

A suite is YAML (regression/*.yaml):

    name: cpu-smoke
    notebooks:
      - path: notebooks/04_cifar10_training.ipynb     # or a stem: "04"
        parameters: {epochs: 1}
        expect:
          - result: summary.images_per_s              # a dotted path into what the notebook recorded
            min: 50

An expectation has one `result` and any of `min`, `max`, `equals`, `min_count` (a list or mapping with at least that
many entries) and `within_percent_of` (another result) with `percent`. A missing result fails. `load` refuses a
malformed suite (unknown key, unknown notebook, bad parameter or threshold) before anything runs, naming the line;
`evaluate` checks a finished run; `junit_xml` writes one testcase per notebook run and one per expectation.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from labkit import notebooks
from labkit.errors import ConfigError, LabkitError, is_number

SUITE_KEYS, ENTRY_KEYS = {"name", "notebooks"}, {"path", "parameters", "expect"}
CHECKS = ("min", "max", "equals", "min_count", "within_percent_of")
EXPECT_KEYS = {"result", "percent", *CHECKS}


@dataclass
class Expectation:
    result: str
    checks: dict[str, Any]
    line: int

    def describe(self) -> str:
        words = {"min": ">=", "max": "<=", "equals": "==", "min_count": "has at least"}
        parts = [f"{words[k]} {v}" for k, v in self.checks.items() if k in words]
        if "within_percent_of" in self.checks:
            parts.append(f"within {self.checks['percent']}% of {self.checks['within_percent_of']}")
        return f"{self.result} {' and '.join(parts)}"


@dataclass
class SuiteEntry:
    notebook: Path
    parameters: dict[str, Any]
    expect: list[Expectation]
    line: int


@dataclass
class Suite:
    name: str
    path: Path
    entries: list[SuiteEntry]


@dataclass
class Outcome:
    notebook: str
    expectation: Expectation
    passed: bool
    measured: Any = None
    message: str = ""  # why not


@dataclass
class SuiteResult:
    suite: Suite
    runs: list  # notebooks.NotebookRun, in suite order
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.runs) and all(o.passed for o in self.outcomes)


class _Map(dict):
    line = 0


def _load_yaml(text: str):
    """Safe YAML whose mappings are _Maps that know their line, so an error can name it."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def mapping(loader, node):
        value = _Map(loader.construct_mapping(node, deep=True))
        value.line = node.start_mark.line + 1
        return value

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return yaml.load(text, Loader=Loader)  # noqa: S506 - a SafeLoader subclass


def _refuse(path: Path, line: int, problem: str, fix: str) -> ConfigError:
    return ConfigError(f"{path.name} line {line}", problem, fix)


def _unknown(path: Path, mapping: _Map, allowed: set[str], what: str) -> None:
    if extra := sorted(set(mapping) - allowed):
        fix = f"use only {', '.join(sorted(allowed))}"
        raise _refuse(path, mapping.line, f"unknown key {extra[0]!r} in {what}", fix)


def _number(path: Path, line: int, key: str, value: Any) -> None:
    if not is_number(value) or not math.isfinite(value):
        raise _refuse(path, line, f"{key}: {value!r} is not a number", f"give {key} a number, e.g. {key}: 50")


def _expectation(path: Path, raw: Any, line: int) -> Expectation:
    if not isinstance(raw, _Map):
        raise _refuse(path, line, "an expectation must be a mapping", "write e.g. `- {result: summary.steps, min: 1}`")
    _unknown(path, raw, EXPECT_KEYS, "an expectation")
    if not isinstance(raw.get("result"), str) or not raw["result"].strip():
        raise _refuse(path, raw.line, "expectation without `result`", "name a recorded result, e.g. summary.steps")
    checks = {k: raw[k] for k in CHECKS if k in raw}
    if not checks:
        problem = f"expectation on {raw['result']} checks nothing"
        raise _refuse(path, raw.line, problem, f"add one of {', '.join(CHECKS)}")
    for key in ("min", "max", "min_count"):
        if key in checks:
            _number(path, raw.line, key, checks[key])
    if "within_percent_of" in checks:
        if not isinstance(checks["within_percent_of"], str) or "percent" not in raw:
            fix = "write `within_percent_of: other.result` with `percent: 10`"
            raise _refuse(path, raw.line, "within_percent_of needs another result's path and a percent", fix)
        _number(path, raw.line, "percent", raw["percent"])
        checks["percent"] = raw["percent"]
    elif "percent" in raw:
        raise _refuse(path, raw.line, "percent without within_percent_of", "add within_percent_of: other.result")
    if checks.get("min_count", 0) < 0 or checks.get("percent", 0) < 0:  # (numbers by now) such a check never passes
        raise _refuse(path, raw.line, "min_count and percent cannot be negative", "give 0 or more")
    return Expectation(raw["result"].strip(), checks, raw.line)


def load(path: str | Path) -> Suite:
    """Read and check a suite: every notebook found, every parameter typed as declared, every threshold a number."""
    import yaml

    path = Path(path)
    try:
        raw = _load_yaml(path.read_text())
    except OSError as exc:
        raise ConfigError("suite", f"cannot read {path}: {exc.strerror}", "pass an existing suite file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = f"not valid YAML ({getattr(exc, 'problem', 'parse error')})"
        raise _refuse(path, mark.line + 1 if mark else 0, problem, "fix the YAML") from None
    if not isinstance(raw, _Map):
        raise _refuse(path, 1, "a suite is a mapping with `notebooks`", "see regression/cpu-smoke.yaml")
    _unknown(path, raw, SUITE_KEYS, "the suite")
    items = raw.get("notebooks")
    if not isinstance(items, list) or not items:
        raise _refuse(path, raw.line, "`notebooks` must be a non-empty list", "list the notebooks to run")
    entries = []
    for item in items:
        line = getattr(item, "line", raw.line)
        if not isinstance(item, _Map) or "path" not in item:
            raise _refuse(path, line, "each notebook entry needs a `path`", "write `- path: notebooks/00_...ipynb`")
        _unknown(path, item, ENTRY_KEYS, "a notebook entry")
        name = str(item["path"])
        if not Path(name).is_file():  # `notebooks/04_....ipynb` from anywhere, or a stem: the kit's notebook
            name = Path(name).stem
        if not isinstance(item.get("parameters") or {}, dict):
            raise _refuse(path, item.line, "`parameters` must be a mapping", "write `parameters: {epochs: 1}`")
        try:
            (notebook,) = notebooks.select([name])
            parameters = notebooks.check_parameters(notebook, dict(item.get("parameters") or {}))
        except ConfigError as exc:
            raise _refuse(path, item.line, f"{exc.field}: {exc.problem}", exc.fix) from None
        expect = item.get("expect") or []
        if not isinstance(expect, list):
            raise _refuse(path, item.line, "`expect` must be a list", "write `expect:` then `- result: ...` lines")
        entries.append(SuiteEntry(notebook, parameters, [_expectation(path, e, item.line) for e in expect], item.line))
    return Suite(str(raw.get("name") or path.stem), path, entries)


_MISSING = object()


def lookup(results: dict[str, Any], dotted: str) -> Any:
    """A recorded value by dotted path (`summary.images_per_s`, `checks.0.status`); _MISSING when absent."""
    value: Any = results
    for part in dotted.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
    return value


def check(results: dict[str, Any], expectation: Expectation) -> tuple[bool, Any, str]:
    """(passed, measured value, why not) for one expectation against a run's recorded results."""
    name, checks = expectation.result, expectation.checks
    value = lookup(results, name)
    if value is _MISSING:
        return False, None, f"{name} was not recorded"
    if "min_count" in checks:
        if not isinstance(value, (list, dict)):
            return False, value, f"{name} = {value!r} is not a list or mapping to count"
        value = len(value)  # what is measured is the count (the collection itself is in the executed notebook)
    for key, limit in checks.items():
        if key == "equals" and (value != limit or isinstance(value, bool) != isinstance(limit, bool)):  # 1 is no True
            return False, value, f"{name} = {value!r}, expected {limit!r}"
        if key == "min_count" and value < limit:
            return False, value, f"{name} has {value} entries, expected at least {limit}"
        if key in ("min", "max", "within_percent_of") and not is_number(value):
            return False, value, f"{name} = {value!r} is not a number"
        if key == "min" and value < limit:
            return False, value, f"{name} = {value:g} is below the minimum {limit:g}"
        if key == "max" and value > limit:
            return False, value, f"{name} = {value:g} is above the maximum {limit:g}"
        if key == "within_percent_of":
            other = lookup(results, limit)
            if not is_number(other):  # _MISSING included
                return False, value, f"{limit} (to compare {name} with) was not recorded as a number"
            if abs(value - other) > abs(other) * checks["percent"] / 100:
                return False, value, f"{name} = {value:g} is not within {checks['percent']:g}% of {limit} = {other:g}"
    return True, value, ""


def evaluate(suite: Suite, runs: list) -> SuiteResult:
    result = SuiteResult(suite, runs)
    for entry, run in zip(suite.entries, runs):
        not_checked = (False, None, f"not checked: {run.name} failed ({run.error})")
        for expectation in entry.expect:  # a notebook that failed recorded nothing trustworthy
            verdict = check(run.results, expectation) if run.passed else not_checked
            result.outcomes.append(Outcome(run.name, expectation, *verdict))
    return result


def run_suite(suite: Suite, **options) -> tuple[Path, SuiteResult]:
    """Run every entry in order (labkit run's runner and report), then check the expectations."""
    if not suite.entries:
        raise LabkitError(f"suite {suite.name} has no notebooks")
    notebook_list, parameters = [e.notebook for e in suite.entries], [e.parameters for e in suite.entries]
    run_dir, runs = notebooks.run_all(notebook_list, per_notebook=parameters, **options)
    result = evaluate(suite, runs)
    notebooks.write_report(run_dir, runs, outcomes=result.outcomes)
    return run_dir, result


def _xml_text(text: str) -> str:
    """Text XML 1.0 can hold: ANSI colour codes (a rank's output in an error) and other control characters go."""
    return re.sub(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]", "", re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text))


def junit_xml(result: SuiteResult) -> str:
    """JUnit XML (the common testsuites/testsuite/testcase shape CI systems read): a testcase per notebook run and per
    expectation, the measured value and threshold in the name and message."""
    cases, classname = [], f"labkit.{result.suite.name}"
    for run in result.runs:
        case = ET.Element("testcase", classname=classname, name=run.name, time=f"{run.duration_s:.3f}")
        if not run.passed:
            error = _xml_text(run.error or "failed")
            failure = ET.SubElement(case, "failure", message=error, type="NotebookFailed")
            failure.text = f"{error}\nexecuted notebook: {run.output}\nreport: {run.html}"
        cases.append(case)
    for outcome in result.outcomes:
        name = f"{outcome.notebook}: {outcome.expectation.describe()}"
        case = ET.Element("testcase", classname=f"{classname}.expect", name=name, time="0")
        ET.SubElement(case, "system-out").text = _xml_text(f"measured: {outcome.measured!r}")
        if not outcome.passed:
            message = _xml_text(outcome.message)
            ET.SubElement(case, "failure", message=message, type="ExpectationFailed").text = message
        cases.append(case)
    totals = {"tests": str(len(cases)), "failures": str(sum(1 for c in cases if c.find("failure") is not None))}
    seconds = f"{sum(r.duration_s for r in result.runs):.3f}"
    root = ET.Element("testsuites", name="labkit", **totals, time=seconds)
    suite = ET.SubElement(root, "testsuite", name=result.suite.name, **totals, errors="0", skipped="0", time=seconds)
    suite.extend(cases)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
