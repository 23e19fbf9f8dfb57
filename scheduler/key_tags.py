"""Key tags: a block key's 64-bit Python ``hash``, taken once per block at admission
(``Sequence.tags``, the request store's arena). The scheduler carries a key as its tag:
numpy arrays of them are sliced and gathered with a step's other per-block arrays, and as
dict keys they cost an int hash, not a bytes one.

Equal keys have equal tags; two different keys with the same tag are just one more
collision, which the cache already resolves by comparing tokens and parents: a tag finds
a candidate, never a hit. Tags never leave the process (the documented keys do).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

NO_TAGS = np.zeros(0, np.int64)  # a prompt with no full block, or no prefix cache
NO_TAGS.flags.writeable = False


def key_tags(keys: Sequence[bytes] | np.ndarray) -> np.ndarray:
    """The tags of ``keys`` (an array of tags is returned as it is)."""
    if isinstance(keys, np.ndarray):
        return keys
    return np.fromiter(map(hash, keys), np.int64, count=len(keys))
