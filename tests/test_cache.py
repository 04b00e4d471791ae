import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launcher import cache
from launcher.checkpoints import Checkpoint, inspect
from launcher.convert import to_hf
from launcher.errors import LauncherError
from tests.fixtures.tiny_models import write_hf


def export_hf(checkpoint: Checkpoint, entry: Path, dtype: str = "auto") -> tuple[Path, bool]:
    """Convert ``checkpoint`` into cache entry ``entry``, as the backends do; ``(entry, cache hit)``."""
    return entry, cache.fill(entry, lambda tmp: to_hf(checkpoint, tmp, dtype))


def test_second_export_is_a_hit(tmp_path: Path) -> None:
    checkpoint = inspect(write_hf(tmp_path / "src"))
    entry = tmp_path / "cache" / "hf-abc"
    start = time.perf_counter()
    path, hit = export_hf(checkpoint, entry, "bfloat16")
    first = time.perf_counter() - start
    assert (path, hit) == (entry, False) and (entry / "config.json").is_file()
    mtime = (entry / "config.json").stat().st_mtime_ns
    start = time.perf_counter()
    assert export_hf(checkpoint, entry, "bfloat16") == (entry, True)
    print(f"export {first * 1000:.0f} ms, cache hit {(time.perf_counter() - start) * 1000:.2f} ms")
    assert (entry / "config.json").stat().st_mtime_ns == mtime


def test_interrupted_export_leaves_no_entry(tmp_path: Path) -> None:
    checkpoint = inspect(write_hf(tmp_path / "src", weights="bin"))  # pickled weights: exported tensor by tensor
    original = checkpoint.stream
    assert original is not None

    def dies_halfway():
        for i, item in enumerate(original()):
            if i == 5:
                raise KeyboardInterrupt
            yield item

    checkpoint.stream = dies_halfway
    entry = tmp_path / "cache" / "hf-abc"
    with pytest.raises(KeyboardInterrupt):
        export_hf(checkpoint, entry)
    assert list((tmp_path / "cache").iterdir()) == []
    checkpoint.stream = original
    assert export_hf(checkpoint, entry) == (entry, False)


def test_a_bad_checkpoint_leaves_no_entry(tmp_path: Path) -> None:
    source = write_hf(tmp_path / "src")
    checkpoint = inspect(source)  # the header is checked here, so the file is cut short only afterwards
    weights = source / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(LauncherError):
        export_hf(checkpoint, tmp_path / "cache" / "entry")
    assert list((tmp_path / "cache").iterdir()) == []


def test_fill_runs_produce_once(tmp_path: Path) -> None:
    calls = []
    entry = tmp_path / "e"
    assert cache.fill(entry, lambda tmp: calls.append((tmp / "x").write_text("1"))) is False
    assert cache.fill(entry, lambda tmp: calls.append(1)) is True
    assert len(calls) == 1 and (entry / "x").read_text() == "1"


def test_a_killed_writers_temp_dir_is_removed_by_the_next_writer(tmp_path: Path) -> None:
    """A SIGKILLed export cannot clean up; its temp dir carries its pid, so the next export removes it."""
    entry = tmp_path / "cache" / "hf-abc"
    entry.parent.mkdir(parents=True)
    writer = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from launcher.cache import temp_dir; print(temp_dir(Path(sys.argv[1])), flush=True); "
                               "time.sleep(60)", str(entry)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    left = Path(writer.stdout.readline().strip())
    assert left.is_dir() and f".{os.getpid()}." not in left.name
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    mine = cache.temp_dir(tmp_path / "cache" / "other")  # a live writer's temp dir stays
    assert cache.fill(tmp_path / "cache" / "next", lambda tmp: (tmp / "x").write_text("1")) is False
    assert not left.exists() and mine.is_dir()
