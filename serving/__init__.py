"""The prefill instance's serving loop: scheduler, executor and KV transfer together."""

from .loop import ServingLoop
from .stats import RunStats, percentile

__all__ = ["RunStats", "ServingLoop", "percentile"]
