"""The prefill instance's serving loop: scheduler, executor and KV transfer together."""

from .loop import RunStats, ServingLoop, percentile

__all__ = ["RunStats", "ServingLoop", "percentile"]
