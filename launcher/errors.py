"""User-facing errors: one line per problem, naming the config key and the fix; exit status 2."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

USER_ERROR_EXIT = 2
SIGNAL_EXIT = {"SIGINT": 130, "SIGTERM": 143}  # 128 + the signal's number, as shells report it


@dataclass(frozen=True)
class Problem:
    key: str  # config key as a user types it on the command line, or a file path
    message: str
    fix: str = ""

    def __str__(self) -> str:
        return f"{self.key}: {self.message}" + (f" ({self.fix})" if self.fix else "")


class LauncherError(Exception):
    """An error caused by the user's input or environment, reported without a traceback."""

    def __init__(self, *problems: Problem) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


def user_error(key: str, message: str, fix: str = "") -> LauncherError:
    return LauncherError(Problem(key, message, fix))


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM stopped the run while it was at ``stage``."""

    def __init__(self, signal_name: str = "SIGINT", stage: str = "") -> None:
        super().__init__(signal_name)
        self.signal_name, self.stage = signal_name, stage

    @property
    def exit_status(self) -> int:
        return SIGNAL_EXIT[self.signal_name]


def exit_with(run: Callable[[], int]) -> NoReturn:
    """A command's ``main``: exit with what ``run`` returns; a :class:`LauncherError` is its problems on stderr,
    one line each, and status 2; Ctrl-C is status 130, no traceback."""
    try:
        code = run()
    except LauncherError as err:
        for problem in err.problems:
            print(f"error {problem}", file=sys.stderr)
        code = USER_ERROR_EXIT
    except KeyboardInterrupt:
        code = SIGNAL_EXIT["SIGINT"]
    sys.exit(code)
