"""Print the fuzz budget: inputs tried per reader (and how many parsed or were refused), in any output mode."""

from __future__ import annotations

import pytest

from tests.hostile import fuzzing


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not fuzzing.TRIED:
        return
    total = sum(fuzzing.TRIED.values())
    seconds = sum(fuzzing.SECONDS.values())
    terminalreporter.write_sep("-", f"hostile fuzzing: {total} inputs in {seconds:.1f} s of reading "
                                    f"({fuzzing.EXAMPLES} examples per fuzz test)")
    for reader, tried in sorted(fuzzing.TRIED.items()):
        parsed, refused = fuzzing.OUTCOMES[reader, "parsed"], fuzzing.OUTCOMES[reader, "refused"]
        terminalreporter.write_line(f"{reader:24} {tried:6} inputs: {parsed} parsed, {refused} refused "
                                    f"in one line, {fuzzing.SECONDS[reader]:.2f} s")
