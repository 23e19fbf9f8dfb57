"""Checks the executor's first tokens before the scheduler records any of them."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def check_first_tokens(tokens: Any, request_ids: tuple[str, ...], vocab_size: int) -> np.ndarray:
    """int64 copy of ``tokens`` [>= len(request_ids)]; -1 marks a row with no token.

    Raises ValueError naming every row whose entry is not an int in [-1, vocab_size)
    (None, NaN, inf, a fraction, out of range): the caller records nothing then.
    """
    n = len(request_ids)
    arr = np.asarray(tokens, dtype=object) if not isinstance(tokens, np.ndarray) else tokens
    if arr.ndim != 1 or arr.shape[0] < n:
        raise ValueError(f"sampled_token_ids needs >= {n} entries, got shape {arr.shape}")
    if arr.dtype.kind in "iu":  # an executor's int array: one range check
        # (as a list: a few hundred ints; a cold numpy reduction costs more)
        head = arr[:n].tolist()
        if n == 0 or (min(head) >= -1 and max(head) < vocab_size):
            return np.array(head, np.int64)
    out = np.empty(n, dtype=np.int64)
    bad = []
    for i in range(n):
        v = arr[i]
        ok = isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
        if not ok and isinstance(v, (float, np.floating)) and math.isfinite(v) and v == int(v):
            ok, v = True, int(v)  # an integral float (e.g. from a float array) is fine
        if ok and -1 <= int(v) < vocab_size:
            out[i] = int(v)
        else:
            bad.append(f"{request_ids[i]!r} (row {i}: {v!r})")
    if bad:
        raise ValueError(
            f"sampled token not an int in [-1, {vocab_size}) for {', '.join(bad)}; nothing "
            "was recorded (pass -1 for a row without a token and abort that request)"
        )
    return out
