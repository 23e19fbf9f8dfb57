"""Scheduler configuration and the capture-bucket ladder."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from graphbatch.sampling import MAX_SEED

DUMMY_BLOCK = 0  # reserved KV block: padding tokens write here, never handed to a request


def default_token_buckets(max_num_batched_tokens: int) -> tuple[int, ...]:
    """Capture sizes like the peers' ladders: 1, 2, 4, 8, then widening steps.

    Steps of 16 up to 256, 64 up to 1024, 256 beyond; the budget itself is always
    the last bucket so every batch the scheduler can emit has a graph size.
    """
    ladder = [1, 2, 4, 8]
    ladder += list(range(16, 257, 16))
    ladder += list(range(320, 1025, 64))
    ladder += list(range(1280, max_num_batched_tokens + 1, 256))
    buckets = sorted({b for b in ladder if b < max_num_batched_tokens} | {max_num_batched_tokens})
    return tuple(buckets)


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"SchedulerConfig.{name} must be an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"SchedulerConfig.{name} must be > 0, got {value}")


@dataclass(frozen=True)
class SchedulerConfig:
    """Limits of one prefill instance.

    Block 0 of the KV cache is the dummy block, so ``num_kv_blocks - 1`` blocks
    are available to requests.
    """

    max_num_seqs: int
    max_num_batched_tokens: int
    block_size: int
    num_kv_blocks: int
    max_model_len: int
    vocab_size: int
    token_buckets: tuple[int, ...] | None = None
    seed: int = 0  # seeds requests that bring none, reproducibly
    enable_prefix_caching: bool = True
    # requests held at once (prefilling + waiting for KV transfer); None: 4 x max_num_seqs.
    # max_num_seqs is the rows of one batch (the capture capacity).
    max_num_requests: int | None = None
    long_prefill_token_threshold: int = 0  # per-request chunk cap per step; 0 = off
    # Prefix caching, when a request is first scheduled: a request whose next full blocks
    # an earlier request is computing in a step not yet retired waits for that step (and
    # then hits them) instead of computing them twice.
    wait_for_prefix: bool = True
    # Sub-block reuse: KV slots a step can copy from a cached block into a request's own
    # block (the descriptor's copy_*_slots capacity, copied every step: keep it small).
    # None: min(max_num_seqs, 16) * (block_size - 1); 0: no sub-block reuse.
    max_copy_slots: int | None = None
    _buckets: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in (
            "max_num_seqs",
            "max_num_batched_tokens",
            "block_size",
            "num_kv_blocks",
            "max_model_len",
            "vocab_size",
        ):
            _check_positive_int(name, getattr(self, name))
        if not isinstance(self.enable_prefix_caching, bool):
            raise ValueError(
                f"SchedulerConfig.enable_prefix_caching must be a bool, "
                f"got {self.enable_prefix_caching!r}"
            )
        seed = self.seed  # numpy's generator takes any int >= 0; a request seed is int64
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
            raise ValueError(f"SchedulerConfig.seed must be an int in [0, 2**63 - 1], got {seed!r}")
        if self.vocab_size > 2**32:  # prefix-cache keys hash token ids as uint32
            raise ValueError(f"SchedulerConfig.vocab_size must be <= 2**32, got {self.vocab_size}")
        if not isinstance(self.wait_for_prefix, bool):
            raise ValueError(
                f"SchedulerConfig.wait_for_prefix must be a bool, got {self.wait_for_prefix!r}"
            )
        if self.max_copy_slots is None:
            default = min(self.max_num_seqs, 16) * (self.block_size - 1)
            object.__setattr__(self, "max_copy_slots", default)
        c = self.max_copy_slots
        if isinstance(c, bool) or not isinstance(c, int) or c < 0:
            raise ValueError(f"SchedulerConfig.max_copy_slots must be an int >= 0, got {c!r}")
        if self.max_num_requests is None:
            object.__setattr__(self, "max_num_requests", 4 * self.max_num_seqs)
        _check_positive_int("max_num_requests", self.max_num_requests)
        t = self.long_prefill_token_threshold
        if isinstance(t, bool) or not isinstance(t, int) or t < 0:
            raise ValueError(
                f"SchedulerConfig.long_prefill_token_threshold must be an int >= 0, got {t!r}"
            )
        if self.num_kv_blocks < 2:
            raise ValueError(
                f"SchedulerConfig.num_kv_blocks must be >= 2 (block 0 is reserved), "
                f"got {self.num_kv_blocks}"
            )
        object.__setattr__(self, "_buckets", self._resolve_buckets())

    def _resolve_buckets(self) -> tuple[int, ...]:
        if self.token_buckets is None:
            return default_token_buckets(self.max_num_batched_tokens)
        buckets = tuple(self.token_buckets)
        for b in buckets:
            if isinstance(b, bool) or not isinstance(b, int) or b <= 0:
                raise ValueError(f"SchedulerConfig.token_buckets holds {b!r}; need ints > 0")
            if b > self.max_num_batched_tokens:
                raise ValueError(
                    f"SchedulerConfig.token_buckets holds {b} > max_num_batched_tokens "
                    f"({self.max_num_batched_tokens})"
                )
        return tuple(sorted(set(buckets) | {self.max_num_batched_tokens}))

    @property
    def buckets(self) -> tuple[int, ...]:
        """Resolved, sorted token buckets; the last equals max_num_batched_tokens."""
        return self._buckets

    @property
    def max_blocks_per_seq(self) -> int:
        return -(-self.max_model_len // self.block_size)

    @property
    def num_slots(self) -> int:
        return self.num_kv_blocks * self.block_size

    def bucket_for(self, num_tokens: int) -> int:
        """Smallest capture bucket that holds ``num_tokens``."""
        if num_tokens <= 0 or num_tokens > self.max_num_batched_tokens:
            raise ValueError(f"num_tokens={num_tokens} outside [1, {self.max_num_batched_tokens}]")
        return self._buckets[bisect.bisect_left(self._buckets, num_tokens)]
