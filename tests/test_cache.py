import time
from pathlib import Path

import pytest

from launcher import cache
from launcher.checkpoints import inspect
from launcher.errors import LauncherError
from tests.fixtures.tiny_models import write_hf


def test_second_export_is_a_hit(tmp_path: Path) -> None:
    checkpoint = inspect(write_hf(tmp_path / "src"))
    entry = tmp_path / "cache" / "hf-abc"
    start = time.perf_counter()
    path, hit = cache.export_hf(checkpoint, entry, "bfloat16")
    first = time.perf_counter() - start
    assert (path, hit) == (entry, False) and (entry / "config.json").is_file()
    mtime = (entry / "config.json").stat().st_mtime_ns
    start = time.perf_counter()
    assert cache.export_hf(checkpoint, entry, "bfloat16") == (entry, True)
    print(f"export {first * 1000:.0f} ms, cache hit {(time.perf_counter() - start) * 1000:.2f} ms")
    assert (entry / "config.json").stat().st_mtime_ns == mtime


def test_interrupted_export_leaves_no_entry(tmp_path: Path) -> None:
    checkpoint = inspect(write_hf(tmp_path / "src"))
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
        cache.export_hf(checkpoint, entry)
    assert list((tmp_path / "cache").iterdir()) == []
    checkpoint.stream = original
    assert cache.export_hf(checkpoint, entry) == (entry, False)


def test_a_bad_checkpoint_leaves_no_entry(tmp_path: Path) -> None:
    source = write_hf(tmp_path / "src")
    checkpoint = inspect(source)  # the header is checked here, so the file is cut short only afterwards
    weights = source / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(LauncherError):
        cache.export_hf(checkpoint, tmp_path / "cache" / "entry")
    assert list((tmp_path / "cache").iterdir()) == []


def test_fill_runs_produce_once(tmp_path: Path) -> None:
    calls = []
    entry = tmp_path / "e"
    assert cache.fill(entry, lambda tmp: calls.append((tmp / "x").write_text("1"))) is False
    assert cache.fill(entry, lambda tmp: calls.append(1)) is True
    assert len(calls) == 1 and (entry / "x").read_text() == "1"
