"""Bench settings and SLA strings: what is accepted, and one problem naming the ``bench.*`` key otherwise."""

from __future__ import annotations

import pytest

from launcher.bench import BenchSettings, SlaBound, parse_sla
from launcher.bench.settings import sla_text
from launcher.errors import LauncherError


@pytest.mark.parametrize("sla, expected", [
    ("ttft_p95_ms=500 itl_p95_ms=100", (SlaBound("ttft", 95, 500.0), SlaBound("itl", 95, 100.0))),
    ("e2e_p50_ms=2000,ttft_p99_ms=750.5", (SlaBound("e2e", 50, 2000.0), SlaBound("ttft", 99, 750.5))),
    ({"itl_p90_ms": 40}, (SlaBound("itl", 90, 40.0),)),
    ("", ()),
    (None, ()),
])
def test_sla_parses(sla: object, expected: tuple[SlaBound, ...]) -> None:
    assert parse_sla(sla) == expected
    assert parse_sla(sla_text(expected)) == expected


@pytest.mark.parametrize("sla, words", [
    ("ttft_p95_ms", "not key=value"),
    ("ttft=500", "unknown bound 'ttft'"),
    ("tpot_p95_ms=5", "unknown bound 'tpot_p95_ms'"),
    ("ttft_p42_ms=5", "unknown bound 'ttft_p42_ms'"),
    ("ttft_p95_ms=-1", "positive number"),
    ("ttft_p95_ms=fast", "positive number"),
    ("ttft_p95_ms=inf", "positive number"),
    ("ttft_p50_ms=100 ttft_p99_ms=400", "ttft is bounded twice"),
])
def test_bad_sla_is_one_problem(sla: str, words: str) -> None:
    with pytest.raises(LauncherError) as caught:
        parse_sla(sla)
    (problem,) = caught.value.problems
    assert problem.key == "bench.sla"
    assert words in problem.message and problem.fix


@pytest.mark.parametrize("changes, key", [
    ({"concurrency": ()}, "bench.concurrency"),
    ({"concurrency": (1, 0)}, "bench.concurrency"),
    ({"concurrency": (2, 2)}, "bench.concurrency"),
    ({"input_tokens": 0}, "bench.input_tokens"),
    ({"output_tokens": 1}, "bench.output_tokens"),
    ({"warmup_requests": -1}, "bench.warmup_requests"),
    ({"requests": None}, "bench.requests"),
    ({"duration_s": 30.0}, "bench.requests"),
    ({"requests": 0}, "bench.requests"),
    ({"requests": None, "duration_s": 0.0}, "bench.duration_s"),
    ({"endpoint": "embeddings"}, "bench.endpoint"),
    ({"timeout_s": 0.0}, "bench.timeout_s"),
])
def test_bad_settings_name_their_key(changes: dict, key: str) -> None:
    problems = BenchSettings(**changes).problems()
    assert [problem.key for problem in problems] == [key], problems


def test_default_and_duration_settings_are_valid() -> None:
    assert BenchSettings().problems() == []
    assert BenchSettings(requests=None, duration_s=60.0, endpoint="completions").problems() == []


def test_settings_round_trip_through_json_form() -> None:
    settings = BenchSettings(concurrency=(1, 4), requests=None, duration_s=12.5, sla=parse_sla("ttft_p95_ms=500"))
    data = settings.to_dict()
    assert data["sla"] == {"ttft_p95_ms": 500.0} and data["concurrency"] == [1, 4]
    assert BenchSettings.from_dict(data) == settings
    assert BenchSettings.from_dict({"concurrency": [2, 8], "sla": "itl_p95_ms=100"}).concurrency == (2, 8)


def test_unknown_setting_is_named() -> None:
    with pytest.raises(LauncherError) as caught:
        BenchSettings.from_dict({"concurrency": [1], "concurency": [2]})
    (problem,) = caught.value.problems
    assert problem.key == "bench.concurency" and "concurrency" in problem.fix
