"""The lessons' run: each broken gateway must fail for its lesson's reason, each fixed one pass.

``nox -s lessons`` (or ``pytest examples/lessons``) runs every lesson's test
against both versions (`harness.lesson`) and ends with a table::

    lesson                        broken               fixed
    01_closed_before_read         fails as expected    passes
    ...

The verdicts are pytest's own. A broken version that fails with its
lesson's `Symptom` is reported as an expected failure (``x``); one that
passes, or fails any other way, fails the run; so does a fixed version that
fails.

The broken gateways leak sockets on purpose (that is what several lessons
are about), so ``ResourceWarning`` is not an error here.
"""

from __future__ import annotations

import warnings
from collections.abc import Generator

import pytest
from harness import Gateway, Symptom

_VERDICTS = pytest.StashKey[dict[str, dict[str, str]]]()
_REASONS = pytest.StashKey[dict[str, str]]()


def pytest_configure(config: pytest.Config) -> None:
    # For each test, and for the whole session (a leaked socket may be collected at its end).
    config.addinivalue_line("filterwarnings", "ignore::ResourceWarning")
    warnings.filterwarnings("ignore", category=ResourceWarning)
    config.stash[_VERDICTS] = {}
    config.stash[_REASONS] = {}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    callspec = getattr(item, "callspec", None)
    gateway = callspec.params.get("gateway") if callspec is not None else None
    if callspec is None or not isinstance(gateway, Gateway) or (
            report.when != "call" and report.passed):
        return report
    error = _single(call.excinfo.value) if call.excinfo is not None else None
    if report.when != "call":
        verdict = f"ERROR ({report.when})"
    elif gateway.version == "fixed":
        verdict = "passes" if report.passed else "FAILS"
    elif isinstance(error, Symptom):
        report.outcome, report.wasxfail = "skipped", str(error)  # pytest's expected failure
        verdict = "fails as expected"
    elif error is None:
        report.outcome = "failed"
        report.longrepr = "the broken gateway passed: the test does not show its lesson"
        verdict = "UNEXPECTEDLY PASSES"
    else:
        verdict = "FAILS FOR ANOTHER REASON"
    if error is not None:
        item.config.stash[_REASONS][f"{_row(item, gateway, callspec.id)} ({gateway.version})"] = (
            str(error) if isinstance(error, Symptom) else f"{type(error).__name__}: {error}")
    item.config.stash[_VERDICTS].setdefault(_row(item, gateway, callspec.id), {})[
        gateway.version] = verdict
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    verdicts = terminalreporter.config.stash[_VERDICTS]
    if not verdicts:
        return
    width = max(len(row) for row in verdicts) + 2
    write = terminalreporter.write_line
    terminalreporter.section("lessons")
    write(f"{'lesson, and what its test checks':<{width}}{'broken':<28}fixed")
    for row, by_version in sorted(verdicts.items()):
        write(f"{row:<{width}}{by_version.get('broken', '-'):<28}{by_version.get('fixed', '-')}")
    write("")
    write("why each failed:")
    for row, reason in sorted(terminalreporter.config.stash[_REASONS].items()):
        write(f"  {row}: {reason}")


def _row(item: pytest.Item, gateway: Gateway, callspec_id: str) -> str:
    """The table's row: the lesson, what its test checks, and the case if it has several."""
    check = getattr(item, "originalname", item.name).removeprefix("test_")
    check = check.split("_", 1)[-1].replace("_", " ")  # test_07_the_linter... -> the linter...
    case = "-".join(part for part in callspec_id.split("-") if part != gateway.version)
    return f"{gateway.lesson}  {check}" + (f" ({case})" if case else "")


def _single(error: BaseException) -> BaseException:
    """The one exception inside nested one-exception groups (pytest-trio's nursery adds one)."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error
