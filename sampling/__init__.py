"""Sampling value rules shared by the scheduler and the kernels (numpy only: see
``rules``)."""

from .rules import (
    FLOAT32_MAX,
    MAX_SEED,
    MAX_TOP_K,
    MIN_TOP_P,
    RULE_OF_FIELD,
    SAMPLING_RULES,
    SamplingRule,
)

__all__ = [
    "FLOAT32_MAX",
    "MAX_SEED",
    "MAX_TOP_K",
    "MIN_TOP_P",
    "RULE_OF_FIELD",
    "SAMPLING_RULES",
    "SamplingRule",
]
