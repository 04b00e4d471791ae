"""The hostile suite's session: CLI cases start in the background at once (the fuzz tests, in this process,
run first, meanwhile), and the fuzz budget is printed: inputs tried per reader, in any output mode."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future

import pytest

from tests.hostile import cli, fuzzing


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Within tests/hostile, the in-process tests first: CPU left over by the CLI subprocesses goes to them."""
    hostile = [i for i, item in enumerate(items) if item.nodeid.startswith("tests/hostile/")]
    ordered = sorted((items[i] for i in hostile), key=lambda item: "cli_outcomes" in item.fixturenames)
    for i, item in zip(hostile, ordered, strict=True):
        items[i] = item


@pytest.fixture(scope="session")
def cli_outcomes(request: pytest.FixtureRequest,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Future[cli.Outcome]]]:
    """Outcomes of every selected CLI case (a ``case`` parameter of a test using this fixture), by case id."""
    cases = [item.callspec.params["case"] for item in request.session.items
             if "cli_outcomes" in item.fixturenames and hasattr(item, "callspec")]
    outcomes, wait = cli.start(cases, tmp_path_factory.mktemp("cli"))
    yield outcomes
    wait()


@pytest.fixture(scope="session", autouse=True)
def _start_cli_cases(request: pytest.FixtureRequest) -> None:
    """Start the CLI cases with the first hostile test, whichever it is."""
    if any("cli_outcomes" in item.fixturenames for item in request.session.items):
        request.getfixturevalue("cli_outcomes")


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
