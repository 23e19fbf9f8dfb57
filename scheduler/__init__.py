"""Prefill scheduler emitting fixed-capacity batch descriptors."""

from .block_manager import BlockAccountingError, BlockManager
from .config import DUMMY_BLOCK, SchedulerConfig, default_token_buckets
from .descriptor import BatchDescriptor
from .errors import DescriptorError, StaleDescriptor
from .prefill import PrefillScheduler, SchedulerFull, SchedulerStats, UnknownRequest
from .request import Request, SamplingParams
from .sequence import SeqState
from .warmup import warm_up

__all__ = [
    "DUMMY_BLOCK",
    "BatchDescriptor",
    "BlockAccountingError",
    "BlockManager",
    "DescriptorError",
    "PrefillScheduler",
    "Request",
    "SamplingParams",
    "SchedulerConfig",
    "SchedulerFull",
    "SchedulerStats",
    "SeqState",
    "StaleDescriptor",
    "UnknownRequest",
    "default_token_buckets",
    "warm_up",
]
