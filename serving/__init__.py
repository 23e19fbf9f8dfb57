"""The prefill instance an engine embeds: ``PrefillEngine`` (add / step / abort) over the
scheduler, the executor and the KV transfer, configured by one ``EngineConfig``."""

from graphbatch.scheduler import SamplingParams

from .config import ConfigError, EngineConfig
from .engine import PrefillEngine
from .metrics import EngineStats, Histogram, prometheus_registry
from .outputs import ABORTED, FAILED, PREFILLED, SENT, STATUSES, RequestOutput

__all__ = [
    "ABORTED",
    "FAILED",
    "PREFILLED",
    "SENT",
    "STATUSES",
    "ConfigError",
    "EngineConfig",
    "EngineStats",
    "Histogram",
    "PrefillEngine",
    "RequestOutput",
    "SamplingParams",
    "prometheus_registry",
]
