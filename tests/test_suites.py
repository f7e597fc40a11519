"""Regression suites (issue 17): a malformed suite is refused before anything runs, naming its line; expectations
pass and fail as stated; a failing threshold is a failed JUnit testcase and a non-zero exit; cpu-smoke passes here."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import junitparser
import pytest
from kit_testing import ROOT

from labkit import notebooks, results, suites
from labkit.errors import ConfigError

CLI = [sys.executable, "-c", "import sys; from labkit.cli import main; sys.exit(main(sys.argv[1:]))"]


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize(
    "text,line,words",
    [
        ("notebooks:\n  - path: '00'\n    paramters: {}\n", 2, "unknown key 'paramters' in a notebook entry"),
        ("notebooks:\n  - path: '99'\n", 2, "'99' matches 0 notebooks"),
        ("notebooks:\n  - path: '04'\n    parameters: {epoch: 1}\n", 2, "parameter epoch"),
        ("notebooks:\n  - path: '04'\n    parameters: {epochs: many}\n", 2, "epochs"),
        ("notebooks:\n  - path: '00'\n    expect:\n      - result: checks\n        min: lots\n", 4, "min: 'lots'"),
        ("notebooks:\n  - path: '00'\n    expect:\n      - {result: checks}\n", 4, "checks nothing"),
        ("notebooks:\n  - path: '00'\n    expect:\n      - {result: a, within_percent_of: b}\n", 4, "a percent"),
        ("name: x\nnotebook: []\n", 1, "unknown key 'notebook' in the suite"),
        ("notebooks: [\n", 2, "not valid YAML"),
        ("notebooks:\n  - path: '00'\n    parameters: [api_timeout_s, 1]\n", 2, "`parameters` must be a mapping"),
        ("notebooks:\n  - path: '04'\n    parameters: {epochs: 2.5}\n", 2, "2.5 is not a int"),  # YAML-typed
        ("notebooks:\n  - path: '00'\n    parameters: {api_timeout_s: true}\n", 2, "True is not a float"),
        (
            "notebooks:\n  - path: '00'\n    expect:\n      - {result: a, within_percent_of: b, percent: -5}\n",
            4,
            "cannot be negative",
        ),  # such a check could never pass
        ("notebooks:\n  - path: '00'\n    expect:\n      - {result: a, min_count: -1}\n", 4, "cannot be negative"),
    ],
)
def test_a_malformed_suite_is_refused_naming_the_line_before_anything_runs(tmp_path, monkeypatch, text, line, words):
    monkeypatch.setattr(notebooks, "run_all", lambda *a, **k: pytest.fail("a notebook ran"))
    with pytest.raises(ConfigError) as err:
        suites.load(write(tmp_path, text))
    assert err.value.field == f"suite.yaml line {line}" and words in str(err.value)


def _expect(**checks) -> suites.Expectation:
    result = checks.pop("result", "summary.rate")
    return suites.Expectation(result, checks, 1)


RESULTS = {"summary": {"rate": 100.0, "first": 95.0, "ok": True}, "checks": [{"status": "pass"}] * 3}


@pytest.mark.parametrize(
    "expectation,passed,words",
    [
        (_expect(min=50), True, ""),
        (_expect(min=150), False, "below the minimum 150"),
        (_expect(max=99), False, "above the maximum 99"),
        (_expect(result="summary.ok", equals=True), True, ""),
        (_expect(result="summary.ok", equals=False), False, "expected False"),
        (_expect(result="checks", min_count=3), True, ""),
        (_expect(result="checks", min_count=4), False, "has 3 entries, expected at least 4"),
        (_expect(result="summary.rate", min_count=1), False, "not a list or mapping"),
        (_expect(result="checks.0.status", equals="pass"), True, ""),
        (_expect(result="summary.first", within_percent_of="summary.rate", percent=10), True, ""),
        (_expect(result="summary.first", within_percent_of="summary.rate", percent=2), False, "not within 2%"),
        (_expect(result="summary.missing", min=1), False, "summary.missing was not recorded"),
        (_expect(result="summary.ok", min=0), False, "is not a number"),
        (_expect(result="summary.ok", equals=1), False, "expected 1"),  # a recorded True is no 1
        (_expect(result="checks.0.status", equals=True), False, "expected True"),
        (_expect(result="summary.rate", equals=True), False, "expected True"),
    ],
)
def test_expectations_pass_and_fail_as_stated(expectation, passed, words):
    ok, _, why = suites.check(RESULTS, expectation)
    assert ok == passed and words in why


def test_a_failing_threshold_fails_its_testcase_and_the_exit_code(tmp_path):
    suite = write(
        tmp_path,
        """\
        name: impossible
        notebooks:
          - path: notebooks/00_environment_check.ipynb
            parameters: {api_timeout_s: 1.0}
            expect:
              - result: checks
                min_count: 1
              - result: checks
                min_count: 1000
        """,
    )
    junit = tmp_path / "out.xml"
    done = subprocess.run(
        [*CLI, "run", "--suite", str(suite), "--junit", str(junit), "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    assert "expectation failed: 00_environment_check: checks has" in done.stderr
    assert "1 of 2 expectations met" in done.stdout
    xml = junitparser.JUnitXml.fromfile(str(junit))
    (suite_xml,) = list(xml)
    cases = {case.name: case for case in suite_xml}
    assert suite_xml.name == "impossible" and suite_xml.tests == 3 and suite_xml.failures == 1
    assert cases["00_environment_check"].is_passed
    assert cases["00_environment_check: checks has at least 1"].is_passed
    failed = cases["00_environment_check: checks has at least 1000"]
    assert not failed.is_passed and "expected at least 1000" in failed.result[0].message
    report = (tmp_path / "run" / "index.html").read_text()
    assert "FAILED: checks has at least 1000" in report
    cell = results.cell_of(tmp_path / "run" / "00_environment_check.ipynb", "checks")
    assert cell and f'href="00_environment_check.html#cell-id={cell}">the cell</a>' in report  # where it was recorded
    assert_valid_junit(junit.read_text())


# The common JUnit schema (Jenkins/Surefire's junit-10.xsd, MIT, Gregory Boissinot), as pytest ships it for its own
# junitxml tests (pytest 9.2.0 sdist, testing/example_scripts/junit-10.xsd).
JUNIT_XSD = Path(__file__).parent / "data" / "junit-10.xsd"


def assert_valid_junit(xml: str) -> None:
    import xmlschema

    xmlschema.XMLSchema(str(JUNIT_XSD)).validate(xml)  # raises XMLSchemaValidationError naming the element


def test_junit_names_a_failed_notebook_and_skips_its_checks():
    suite = suites.Suite("s", Path("s.yaml"), [suites.SuiteEntry(Path("x.ipynb"), {}, [_expect(min=1)], 1)])
    run = notebooks.NotebookRun(name="x", source="x.ipynb", status="failed", error="cell 3 failed: ValueError: no")
    result = suites.evaluate(suite, [run])
    assert not result.passed and "not checked: x failed" in result.outcomes[0].message
    xml = suites.junit_xml(result)
    assert 'failures="2"' in xml and 'type="NotebookFailed"' in xml and "cell 3 failed" in xml
    assert_valid_junit(xml)
    run.error = "cell 3 failed: RuntimeError: rank 1 failed: \x1b[31mNCCL error\x1b[0m\x07"  # a rank's colours
    xml = suites.junit_xml(suites.evaluate(suite, [run]))
    assert "rank 1 failed: NCCL error" in xml and "\x1b" not in xml  # XML 1.0 cannot hold them: CI could not parse
    assert_valid_junit(xml)


def test_suite_and_notebook_arguments_do_not_mix(tmp_path):
    done = subprocess.run([*CLI, "run", "00", "--suite", str(ROOT / "regression" / "cpu-smoke.yaml")],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode != 0 and "--suite runs exactly the suite's notebooks" in done.stderr


@pytest.mark.parametrize("path", sorted((ROOT / "regression").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_suite_loads(path):
    suite = suites.load(path)
    assert suite.entries and all(entry.expect for entry in suite.entries)


def test_cpu_smoke_pins_every_device_to_cpu():
    # A GPU machine's auto picks cuda: 06 then runs one rank and 04's first epoch pays CUDA start-up, so the suite's
    # world-size and throughput checks would judge a different run than the one they were written for.
    for entry in suites.load(ROOT / "regression" / "cpu-smoke.yaml").entries:
        if "device" in notebooks.declared_parameters(entry.notebook):
            assert entry.parameters.get("device") == "cpu", entry.notebook.name


@pytest.mark.slow
@pytest.mark.timeout(1500)  # eight notebooks in a row: more than the suite's default per-test limit on a busy CI box
def test_cpu_smoke_suite_passes_here(tmp_path):
    junit = tmp_path / "smoke.xml"
    suite = suites.load(ROOT / "regression" / "cpu-smoke.yaml")
    done = subprocess.run(
        [*CLI, "run", "--suite", str(suite.path), "--junit", str(junit), "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=1400, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    xml = junitparser.JUnitXml.fromfile(str(junit))
    (suite_xml,) = list(xml)
    expected = len(suite.entries) + sum(len(entry.expect) for entry in suite.entries)  # a testcase per run and check
    assert suite_xml.failures == 0 and suite_xml.tests == expected and len(suite.entries) == len(notebooks.discover())


def test_an_installed_kit_finds_its_notebooks_through_labkit_notebooks(tmp_path, monkeypatch):
    """The lab image installs labkit as a package: its notebooks are where LABKIT_NOTEBOOKS says."""
    import shutil

    shutil.copy(ROOT / "notebooks" / "00_environment_check.ipynb", tmp_path)
    monkeypatch.setenv("LABKIT_NOTEBOOKS", str(tmp_path))
    assert [p.name for p in notebooks.discover()] == ["00_environment_check.ipynb"]
    assert notebooks.select(["00"]) == [tmp_path / "00_environment_check.ipynb"]
    monkeypatch.setenv("LABKIT_NOTEBOOKS", str(tmp_path / "empty"))  # unset, a wheel's kit finds none: say where
    with pytest.raises(ConfigError, match="no notebooks found .* Fix: set LABKIT_NOTEBOOKS"):
        notebooks.select(["00"])


def test_the_gpu_suite_holds_on_the_notebooks_recorded_on_one_h200():
    """regression/gpu-1.yaml's thresholds come from a recorded run: every notebook at its defaults on the lent H200
    (bench/results/notebooks_defaults_H200.json, the results those executed notebooks recorded)."""
    recorded = json.loads((ROOT / "bench" / "results" / "notebooks_defaults_H200.json").read_text())
    runs = [notebooks.NotebookRun(source=f"{r['name']}.ipynb", **r) for r in recorded["runs"]]
    result = suites.evaluate(suites.load(ROOT / "regression" / "gpu-1.yaml"), runs)
    failed = [
        f"{o.notebook}: {o.expectation.describe()} ({o.message or o.measured})" for o in result.outcomes if not o.passed
    ]
    assert result.passed and not failed, failed
    assert {o.notebook for o in result.outcomes} == {r.name for r in runs}  # every recorded notebook is checked
