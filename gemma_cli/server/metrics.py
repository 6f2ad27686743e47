"""Prometheus metrics for `GET /metrics`, on a registry of the server's own.

A private CollectorRegistry (not prometheus_client's global one) keeps two
apps in one process, as in tests, from clashing over metric names.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
RATE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
MAX_POSITION = 32  # draft positions reported one by one (MAX_DRAFT_TOKENS)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("gemma_requests", "HTTP requests by route and status.", ["route", "status"], registry=r)
        self.generated = Counter("gemma_generated_tokens", "Tokens generated.", ["model"], registry=r)
        self.prompt = Counter("gemma_prompt_tokens", "Prompt tokens evaluated (not served from the KV cache).", ["model"], registry=r)
        self.ttft = Histogram("gemma_time_to_first_token_seconds", "Time from the request to its first token (queue, load, prompt).",
                              ["model"], buckets=TTFT_BUCKETS, registry=r)
        self.rate = Histogram("gemma_tokens_per_second", "Generation rate after the first token, per request.",
                              ["model"], buckets=RATE_BUCKETS, registry=r)
        self.queue_depth = Gauge("gemma_queue_depth", "Requests waiting for a busy model.", registry=r)
        self.rejected = Counter("gemma_queue_rejected", "Requests refused with 503 because the queue was full.", registry=r)
        self.batched = Counter("gemma_batched_requests", "Requests decoded in shared batches with others (GEMMA_NUM_PARALLEL > 1).",
                               ["model"], registry=r)
        self.loaded_models = Gauge("gemma_loaded_models", "Models loaded (or loading).", registry=r)
        self.drafted = Counter("gemma_draft_proposed_tokens", "Draft tokens proposed.", ["model", "source"], registry=r)
        self.accepted = Counter("gemma_draft_accepted_tokens", "Draft tokens accepted by the target.", ["model", "source"], registry=r)
        self.accepted_at = Counter("gemma_draft_accepted_by_position", "Accepted draft tokens by position in the draft (1 = first).",
                                   ["position"], registry=r)

    def observe_generation(self, model: str, outcome: Any, pieces: list[Any]) -> None:
        """Record one finished generation (its outcome and the pieces that carried accepted drafts)."""
        stats = outcome.result.stats
        self.generated.labels(model).inc(stats.generated_tokens)
        self.prompt.labels(model).inc(stats.prompt_evaluated)
        if stats.generated_tokens:
            self.ttft.labels(model).observe(outcome.ttft_s)
        if stats.generated_tokens > 1:
            self.rate.labels(model).observe(stats.tokens_per_s)
        if stats.draft_source != "none":
            self.drafted.labels(model, stats.draft_source).inc(stats.draft_proposed)
            self.accepted.labels(model, stats.draft_source).inc(stats.draft_accepted)
        for piece in pieces:  # a piece is one target pass: its accepted drafts sat at positions 1..n
            for pos in range(1, min(piece.n_drafted, MAX_POSITION) + 1):
                self.accepted_at.labels(str(pos)).inc()

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
