"""User-facing errors: one line per problem, naming the config key and the fix; exit status 2."""

from __future__ import annotations

from dataclasses import dataclass

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
