"""tests/kind: what the kind end-to-end test measured (step times, the burst's scale-up), printed in a
"kind e2e" section at the end of the run, also without -s."""

from __future__ import annotations

from collections.abc import Callable

import pytest

REPORT = pytest.StashKey[list[str]]()


@pytest.fixture(scope="session")
def kind_report(pytestconfig: pytest.Config) -> Callable[[str], None]:
    """Adds a line to the run's "kind e2e" summary."""
    lines = pytestconfig.stash.setdefault(REPORT, [])
    return lines.append


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    lines = config.stash.get(REPORT, [])
    if lines:
        terminalreporter.section("kind e2e")
        for line in lines:
            terminalreporter.write_line(line)
