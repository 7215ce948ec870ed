"""Under ``CI=true`` a skipped test fails the run, unless it needs hardware CI does not have.

CI installs everything the suite uses (the browser, the compiler, the benchmark peers, the
data), so a test that skips there is a missing install step, not an optional extra. The only
skips allowed are those of tests that need a GPU (CUDA) or a CPU with AMX, listed by their
exact reasons. ``tests/conftest.py`` loads these hooks; with pytest-xdist the workers' reports
reach the controlling process, which decides the exit status.
"""

from __future__ import annotations

import os

import pytest

# The reasons of skips that hardware decides (see the tests that give them).
HARDWARE_SKIPS = frozenset(
    {
        "needs CUDA",  # @pytest.mark.gpu, tests/conftest.py
        "checks the CPU-only refusal",  # skipped where CUDA is present, tests/test_fused.py
        "needs a CPU with AMX-BF16",  # tests/test_index_amx.py
    }
)
_UNEXPECTED: list[str] = []


def _reason(report: pytest.TestReport) -> str:
    """The reason a skipped test gave (``pytest.skip(reason)`` or ``skipif(reason=...)``)."""
    longrepr = report.longrepr
    text = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return text.removeprefix("Skipped: ")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Note each skip that is not a hardware skip, under ``CI=true``."""
    if os.environ.get("CI") != "true" or not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = _reason(report)
    if reason not in HARDWARE_SKIPS:
        _UNEXPECTED.append(f"{report.nodeid}: {reason}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail an otherwise green run that skipped what it must not (controller only)."""
    if _UNEXPECTED and not hasattr(session.config, "workerinput") and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """List the skips that failed the run."""
    if _UNEXPECTED:
        terminalreporter.section("skipped under CI=true (only CUDA and AMX skips are allowed)")
        for line in _UNEXPECTED:
            terminalreporter.line(line)
