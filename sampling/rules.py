"""The one table of sampling value rules: each per-request sampling parameter's type,
allowed range, descriptor dtype and padding value.

Three layers check the same values and all read this table: ``SamplingParams.problems()``
(scheduler, on the Python value a caller passes), descriptor validation (scheduler, on
the padded numpy arrays) and the sampler's launcher ``kernels.top_p_sample`` (on the
torch / paddle tensors it is handed). The table lives in its own package, below both,
because ``kernels`` is the lowest layer and must not import ``scheduler``, while
``scheduler`` must stay pure numpy and cannot import ``graphbatch.kernels`` (its
``__init__`` loads torch and Triton). This module imports only numpy.

A range is closed, ``[lo, hi]``, and every bound and padding value is exactly
representable in the descriptor dtype, so every accepted value survives the cast.
``out_of_range`` works unchanged on numpy arrays and torch tensors: NaN fails both
comparisons, and +-inf falls outside the finite bounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

MAX_SEED = 2**63 - 1  # seeds are int64
MAX_TOP_K = 2**31 - 1  # the descriptor stores top_k as int32
FLOAT32_MAX = 3.4028234663852886e38  # temperature is stored as float32
MIN_TOP_P = 1.1754943508222875e-38  # smallest normal float32: a smaller top_p flushes to 0


def _bound_text(v: float | int) -> str:
    if isinstance(v, int) and v > 2**20 and ((v + 1) & v) == 0:  # 2**k - 1
        return f"2**{v.bit_length()} - 1"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


@dataclass(frozen=True)
class SamplingRule:
    """One sampling parameter, the same at every layer that checks it."""

    param: str  # the SamplingParams attribute
    field: str  # the BatchDescriptor field, static buffer and launcher argument
    kind: type  # float (a finite number) or int; bools are neither
    lo: float | int
    hi: float | int
    dtype: np.dtype  # descriptor / static-buffer dtype
    pad: float | int  # padding rows (the parameter's "off" value)
    optional: bool = False  # SamplingParams may hold None: the scheduler resolves it

    def __post_init__(self) -> None:
        for what in ("lo", "hi", "pad"):
            v = getattr(self, what)
            if np.array(v, dtype=self.dtype).item() != v:
                raise ValueError(f"sampling rule {self.param}: {what} {v!r} is not a {self.dtype}")
        if self.problem(self.pad):
            raise ValueError(f"sampling rule {self.param}: pad {self.pad!r} is out of range")

    @property
    def requirement(self) -> str:
        """What a value must be, e.g. ``a finite number in [0, 1]``."""
        kind = "a finite number" if self.kind is float else "an int"
        return f"{kind} in [{_bound_text(self.lo)}, {_bound_text(self.hi)}]"

    def problem(self, value: Any) -> str | None:
        """Why a Python value is not allowed (naming the parameter and value), or None."""
        if value is None and self.optional:
            return None
        numbers = (int, float) if self.kind is float else (int,)
        if (
            isinstance(value, bool)
            or not isinstance(value, numbers)
            or not (self.lo <= value <= self.hi)
        ):
            none = "None or " if self.optional else ""
            return f"{self.param} must be {none}{self.requirement}, got {value!r}"
        return None

    def out_of_range(self, values: Any) -> Any:
        """Boolean mask of the entries of an array or tensor the rule refuses."""
        return ~((values >= self.lo) & (values <= self.hi))


SAMPLING_RULES: tuple[SamplingRule, ...] = (
    SamplingRule("temperature", "temperature", float, 0.0, FLOAT32_MAX, np.dtype(np.float32), 1.0),
    SamplingRule("top_p", "top_p", float, MIN_TOP_P, 1.0, np.dtype(np.float32), 1.0),
    SamplingRule("top_k", "top_k", int, 0, MAX_TOP_K, np.dtype(np.int32), 0),
    SamplingRule("min_p", "min_p", float, 0.0, 1.0, np.dtype(np.float32), 0.0),
    SamplingRule("seed", "seeds", int, 0, MAX_SEED, np.dtype(np.int64), 0, optional=True),
)
RULE_OF_FIELD: dict[str, SamplingRule] = {r.field: r for r in SAMPLING_RULES}
