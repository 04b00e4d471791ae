"""The fuzzing contract and its counters: every input a reader is given ends in a parsed result or one
``LauncherError`` line; ``tests/hostile/conftest.py`` prints how many inputs each reader was given."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis.configuration import set_hypothesis_home_dir

from launcher.errors import LauncherError

TRIED: Counter[str] = Counter()  # reader -> inputs tried in this session
OUTCOMES: Counter[tuple[str, str]] = Counter()  # (reader, "parsed" | "refused")
SECONDS: Counter[str] = Counter()
EXAMPLES = int(os.environ.get("HOSTILE_FUZZ_EXAMPLES", "250"))  # per fuzz test; CI keeps the default

# Hypothesis keeps caches in ./.hypothesis even without an example database: here, in a temporary directory.
_HOME = Path(tempfile.mkdtemp(prefix="hostile-hypothesis-"))
atexit.register(shutil.rmtree, _HOME, True)
set_hypothesis_home_dir(_HOME)

# A fixed budget: EXAMPLES inputs per reader, no deadline per input (CI machines are slow and shared), no
# example database (nothing is written into the checkout), the failing input printed for reproduction.
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


def holds(reader: str, call: Callable[[], object]) -> None:
    """Run ``call`` on one fuzzed input: a result, or a single-line ``LauncherError``; anything else fails."""
    TRIED[reader] += 1
    start = time.perf_counter()
    try:
        call()
    except LauncherError as err:
        OUTCOMES[reader, "refused"] += 1
        assert len(err.problems) == 1 and "\n" not in str(err), repr(str(err))
    else:
        OUTCOMES[reader, "parsed"] += 1
    finally:
        SECONDS[reader] += time.perf_counter() - start
