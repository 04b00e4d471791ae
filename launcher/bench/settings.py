"""What a bench measures: concurrencies, synthetic prompt sizes, run length, endpoint and latency SLA."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from launcher.errors import LauncherError, Problem
from launcher.spec import BenchSpec

ENDPOINTS = ("chat", "completions")  # aiperf --endpoint-type: /v1/chat/completions, /v1/completions
SLA_METRICS = {  # our short name -> aiperf's metric tag (its --goodput keys and export keys)
    "ttft": "time_to_first_token",
    "itl": "inter_token_latency",
    "e2e": "request_latency",
}
SLA_PERCENTILES = (50, 75, 90, 95, 99)  # the percentiles aiperf's export holds that make sense as a bound
SLA_KEY = re.compile(r"(?P<metric>[a-z0-9]+)_p(?P<percentile>\d+)_ms")
SLA_EXAMPLE = "bench.sla='ttft_p95_ms=500 itl_p95_ms=100'"


@dataclass(frozen=True)
class SlaBound:
    """The ``percentile`` of ``metric`` (ttft|itl|e2e, per request) must stay within ``limit_ms``."""

    metric: str
    percentile: int
    limit_ms: float

    @property
    def key(self) -> str:
        """As the user writes it: ``ttft_p95_ms``."""
        return f"{self.metric}_p{self.percentile}_ms"

    @property
    def aiperf_tag(self) -> str:
        return SLA_METRICS[self.metric]


def parse_sla(sla: str | Mapping[str, Any] | None) -> tuple[SlaBound, ...]:
    """``"ttft_p95_ms=500 itl_p95_ms=100"`` (or the same as a mapping) as bounds; one bound per metric."""
    if not sla:
        return ()
    if isinstance(sla, str):
        pairs = []
        for item in sla.replace(",", " ").split():
            key, sep, value = item.partition("=")
            if not sep:
                raise _sla_error(f"'{item}' is not key=value")
            pairs.append((key, value))
    else:
        pairs = list(sla.items())
    bounds: dict[str, SlaBound] = {}
    for key, value in pairs:
        match = SLA_KEY.fullmatch(str(key))
        if not match or match["metric"] not in SLA_METRICS or int(match["percentile"]) not in SLA_PERCENTILES:
            raise _sla_error(f"unknown bound '{key}'", f"use <{'|'.join(SLA_METRICS)}>_p<"
                             f"{'|'.join(map(str, SLA_PERCENTILES))}>_ms, e.g. {SLA_EXAMPLE}")
        try:
            limit = float(value)
        except (TypeError, ValueError):
            limit = math.nan
        if not (limit > 0 and math.isfinite(limit)):
            raise _sla_error(f"{key} must be a positive number of milliseconds, got '{value}'")
        metric = match["metric"]
        if metric in bounds:
            raise _sla_error(f"{metric} is bounded twice ({bounds[metric].key}, {key})",
                             "aiperf's goodput takes one threshold per metric: keep one")
        bounds[metric] = SlaBound(metric, int(match["percentile"]), limit)
    return tuple(bounds.values())


def sla_text(bounds: tuple[SlaBound, ...]) -> str:
    """The bounds as ``parse_sla`` reads them back."""
    return " ".join(f"{bound.key}={bound.limit_ms:g}" for bound in bounds)


def _sla_error(message: str, fix: str = f"e.g. {SLA_EXAMPLE}") -> LauncherError:
    return LauncherError(Problem("bench.sla", message, fix))


DEFAULT = BenchSpec()  # the defaults are the spec's (bench.* on the command line)


@dataclass(frozen=True)
class BenchSettings:
    """One aiperf run per concurrency, each with the same synthetic prompts (fixed seed); see ``BenchSpec``."""

    concurrency: tuple[int, ...] = tuple(DEFAULT.concurrency)
    input_tokens: int = DEFAULT.input_tokens
    output_tokens: int = DEFAULT.output_tokens
    requests: int | None = DEFAULT.requests  # per concurrency; None: send for duration_s instead
    duration_s: float | None = DEFAULT.duration_s  # aiperf then waits up to 30 s for requests in flight
    endpoint: str = DEFAULT.endpoint  # chat: /v1/chat/completions; completions: /v1/completions (streaming)
    seed: int = DEFAULT.seed  # aiperf --random-seed: the same prompts in every run
    sla: tuple[SlaBound, ...] = ()  # defines goodput (parse_sla)
    warmup_requests: int = DEFAULT.warmup_requests  # sent before each measured run, not counted
    server_token_count: bool = DEFAULT.server_token_count  # tokens from the server's usage reports
    ignore_eos: bool = DEFAULT.ignore_eos  # vLLM/TensorRT-LLM/SGLang extension: outputs reach full length
    timeout_s: float = DEFAULT.timeout_s  # per concurrency, aiperf's start-up (about 10 s) included

    def problems(self) -> list[Problem]:
        """Everything wrong with these settings, each naming its ``bench.*`` key."""
        problems = []
        levels = self.concurrency
        if not levels or not all(isinstance(c, int) and c >= 1 for c in levels) or len(set(levels)) != len(levels):
            problems.append(Problem("bench.concurrency", f"must be distinct whole numbers >= 1, got {list(levels)}",
                                    "e.g. bench.concurrency=[1,2,4,8]"))
        for key, value, least in (("input_tokens", self.input_tokens, 1), ("output_tokens", self.output_tokens, 2),
                                  ("warmup_requests", self.warmup_requests, 0)):
            if not isinstance(value, int) or value < least:
                why = " (inter-token latency needs two tokens)" if key == "output_tokens" else ""
                problems.append(Problem(f"bench.{key}", f"must be a whole number >= {least}{why}, got {value}"))
        if (self.requests is None) == (self.duration_s is None):
            problems.append(Problem("bench.requests", "set exactly one of bench.requests and bench.duration_s",
                                    "e.g. bench.requests=32, or bench.requests=null bench.duration_s=60"))
        elif self.requests is not None and (not isinstance(self.requests, int) or self.requests < 1):
            problems.append(Problem("bench.requests", f"must be a whole number >= 1, got {self.requests}"))
        elif self.duration_s is not None and not self.duration_s > 0:
            problems.append(Problem("bench.duration_s", f"must be > 0 seconds, got {self.duration_s}"))
        if self.endpoint not in ENDPOINTS:
            problems.append(Problem("bench.endpoint", f"must be one of {', '.join(ENDPOINTS)}, got '{self.endpoint}'"))
        if not self.timeout_s > 0:
            problems.append(Problem("bench.timeout_s", f"must be > 0 seconds, got {self.timeout_s}"))
        return problems

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, as summary.json records it (the SLA as ``{"ttft_p95_ms": 500}``)."""
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["concurrency"] = list(self.concurrency)
        data["sla"] = {bound.key: bound.limit_ms for bound in self.sla}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BenchSettings:
        """Inverse of :meth:`to_dict`; also takes Hydra's lists and an SLA string."""
        values = dict(data)
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            known = ", ".join(cls.__dataclass_fields__)
            raise LauncherError(*(Problem(f"bench.{key}", "unknown setting", f"known: {known}") for key in unknown))
        if "concurrency" in values:
            values["concurrency"] = tuple(values["concurrency"])
        if "sla" in values:
            values["sla"] = parse_sla(values["sla"])
        return cls(**values)

    @classmethod
    def from_spec(cls, spec: BenchSpec) -> BenchSettings:
        """The spec's ``bench`` group (its ``url`` apart); every problem at once, each naming its key."""
        values = {name: getattr(spec, name) for name in cls.__dataclass_fields__}
        settings = cls.from_dict(values)
        if problems := settings.problems():
            raise LauncherError(*problems)
        return settings
