"""The front end's Prometheus metrics (``GET /metrics``), in a registry of their own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """Request counts by endpoint and status, latencies, tokens in and out, requests in flight."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("openai_requests", "HTTP requests answered, by endpoint and status code",
                                ["endpoint", "status"], registry=self.registry)
        self.in_flight = Gauge("openai_requests_in_flight", "Generations running in Triton",
                               registry=self.registry)
        self.ttft = Histogram("openai_time_to_first_token_seconds", "Request arrival to the first generated text",
                              ["endpoint"], buckets=TTFT_BUCKETS, registry=self.registry)
        self.itl = Histogram("openai_inter_token_latency_seconds", "Time between generated tokens",
                             ["endpoint"], buckets=ITL_BUCKETS, registry=self.registry)
        self.prompt_tokens = Counter("openai_prompt_tokens", "Prompt tokens, as the model counts them",
                                     registry=self.registry)
        self.completion_tokens = Counter("openai_completion_tokens", "Generated tokens, as the model counts them",
                                         registry=self.registry)
        self.cancelled = Counter("openai_requests_cancelled", "Generations cancelled in Triton before their end, "
                                 "by reason", ["reason"], registry=self.registry)
