"""What an engine scrapes: ``EngineStats`` (a snapshot, from any thread) and, with the
``metrics`` extra, a ``prometheus_client`` registry reading it."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

from .outputs import STATUSES

# Latency buckets (seconds, upper bounds): 1 ms to a minute, as Prometheus histograms.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


@dataclass
class Histogram:
    """Counts per upper bound (the last bucket is +inf), their sum and count."""

    bounds: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def copy(self) -> Histogram:
        return Histogram(self.bounds, list(self.counts), self.total, self.count)

    def cumulative(self) -> list[tuple[str, int]]:
        """(le, observations <= le) as Prometheus writes them."""
        out, run = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            run += n
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), run))
        return out


@dataclass(frozen=True)
class EngineStats:
    """Counters since the engine started (scheduler figures as of the last step)."""

    requests: dict[str, int]  # final outputs by status, plus "unfinished"
    ttft: Histogram
    decode_ttft: Histogram  # empty without a transfer
    transfer_latency: Histogram
    steps: int
    prompt_tokens: int  # of every admitted request
    cached_tokens: int  # of those, served from the prefix cache
    computed_tokens: int  # prompt tokens the executor ran
    padded_tokens: int  # token rows executed, padding included
    kv_bytes_sent: int
    transfer_busy_s: float  # time with at least one KV write in flight
    free_blocks: int
    num_kv_blocks: int
    decoded_tokens: int = 0  # continuations the decode side sent back
    decode_s: float = 0.0  # the decode side's time on them (per request, summed)
    decode_span_s: float = 0.0  # first decode step started -> last continuation arrived

    @property
    def prefix_hit_rate(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    @property
    def padding_waste(self) -> float:
        return 1.0 - self.computed_tokens / self.padded_tokens if self.padded_tokens else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        """The decode side's continuations: tokens over the time from its first decode
        step to its last token (batched requests overlap)."""
        span = self.decode_span_s
        return self.decoded_tokens / span if span > 0 else 0.0

    @property
    def transfer_gbps(self) -> float:
        """Bytes acked / time with a write in flight (overlapping writes count once)."""
        return self.kv_bytes_sent / self.transfer_busy_s / 1e9 if self.transfer_busy_s else 0.0


def empty_requests() -> dict[str, int]:
    return dict.fromkeys((*STATUSES, "unfinished"), 0)


class _Collector:
    """Reads ``engine.stats()`` at each scrape (from the HTTP server's thread)."""

    def __init__(self, engine: Any, prefix: str) -> None:
        self.engine, self.prefix = engine, prefix

    def collect(self):
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        s: EngineStats = self.engine.stats()
        p = self.prefix
        by = CounterMetricFamily(f"{p}_requests", "requests ended, by status", labels=["status"])
        for status in STATUSES:
            by.add_metric([status], s.requests[status])
        yield by
        yield GaugeMetricFamily(
            f"{p}_requests_unfinished", "requests added, not yet reported", s.requests["unfinished"]
        )
        for name, h, what in (
            ("ttft_seconds", s.ttft, "add_request -> first token sampled"),
            ("decode_ttft_seconds", s.decode_ttft, "add_request -> KV acked by the decode side"),
            ("transfer_latency_seconds", s.transfer_latency, "KV complete -> acked"),
        ):
            yield HistogramMetricFamily(
                f"{p}_{name}", what, buckets=h.cumulative(), sum_value=h.total
            )
        counters = (
            ("steps", s.steps, "steps executed"),
            ("prompt_tokens", s.prompt_tokens, "prompt tokens of admitted requests"),
            ("cached_tokens", s.cached_tokens, "prompt tokens served from the prefix cache"),
            ("computed_tokens", s.computed_tokens, "prompt tokens computed"),
            ("padded_tokens", s.padded_tokens, "token rows executed, padding included"),
            ("kv_bytes_sent", s.kv_bytes_sent, "KV bytes acked by the decode side"),
        )
        gauges = (
            ("prefix_hit_rate", s.prefix_hit_rate, "cached / prompt tokens"),
            ("padding_waste", s.padding_waste, "padding share of executed token rows"),
            ("free_kv_blocks", s.free_blocks, "allocatable KV blocks"),
            ("kv_blocks", s.num_kv_blocks, "KV blocks in the cache"),
        )
        for family, rows in ((CounterMetricFamily, counters), (GaugeMetricFamily, gauges)):
            for name, value, what in rows:
                yield family(f"{p}_{name}", what, value)


def prometheus_registry(engine: Any, prefix: str = "graphbatch"):
    """A ``prometheus_client.CollectorRegistry`` whose every scrape reads
    ``engine.stats()``; serve it with ``prometheus_client.start_http_server(port,
    registry=...)``. ImportError names the extra when prometheus_client is missing."""
    try:
        from prometheus_client import CollectorRegistry
    except ImportError as e:
        raise ImportError(
            "metrics need prometheus_client: pip install 'graphbatch[metrics]'"
        ) from e
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(engine, prefix))
    return registry
