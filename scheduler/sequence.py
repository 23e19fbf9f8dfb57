"""Scheduler-side state of one admitted request."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from graphbatch.sampling import SAMPLING_RULES

from .key_tags import NO_TAGS
from .request import SamplingParams

if TYPE_CHECKING:
    from .store import Links


class SeqState(enum.Enum):
    PREFILLING = "prefilling"  # prompt tokens left to compute (or in flight)
    TRANSFERRING = "transferring"  # prefill done; waits for its KV cache to be sent


@dataclass(eq=False)
class Sequence:
    request_id: str
    prompt: np.ndarray  # [prompt_len] int64
    sampling: SamplingParams
    seed: int
    block_ids: np.ndarray  # [num_blocks] int32, KV blocks reserved for the whole prompt
    # serial of this incarnation: a new one on re-admission and on a rewind, so a step
    # issued before it never touches the request again
    arrival: int
    num_scheduled: int = 0  # prompt tokens handed to a batch so far (cached ones included)
    # prompt tokens whose KV came from the prefix cache: the shared blocks, plus the
    # slots a sub-block copy brings into its own block
    num_cached: int = 0
    # prompt tokens whose KV is known written, contiguous from 0: cached ones plus the
    # chunks of steps an executor ran in order (PrefillScheduler._mark_executed)
    num_computed: int = 0
    num_shared: int = 0  # leading blocks shared from the prefix cache
    # a sub-block copy planned for this request's first chunk: the cached block it reads
    # (pinned until that step is retired) and how many slots; -1 / 0 for none
    copy_src: int = -1
    copy_len: int = 0
    # tags of its full blocks' keys (prefix_cache.chain_keys, key_tags.key_tags), taken
    # once at admission; a view into the RequestStore's arena
    tags: np.ndarray = field(default_factory=lambda: NO_TAGS)
    tag_list: list[int] = field(default_factory=list)  # the same, as ints (dict probes)
    matched_at: int = -1  # the cache generation its prefix was last matched against
    slot: int = -1  # its row in the scheduler's RequestStore (-1: none)
    links: Links | None = field(default=None, repr=False)  # the store's chain arrays
    first_token: int | None = None
    state: SeqState = SeqState.PREFILLING
    prompt_len: int = field(init=False)  # a plain int: read on every schedule() pass
    # the sampling fields of its descriptor row, in SAMPLING_RULES order
    sampling_values: tuple = field(init=False)

    def __post_init__(self) -> None:
        self.prompt_len = int(self.prompt.shape[0])
        self.sampling_values = tuple(
            getattr(self, r.param) if r.optional else getattr(self.sampling, r.param)
            for r in SAMPLING_RULES
        )

    # the cache chain through its leading blocks: how many are linked, the serial of the
    # last link (NOT_CACHED: the chain broke, nothing after it is cached) and the block
    # holding it. They live in the RequestStore's arrays at the request's slot
    # (``store.Links``), so ``update`` reads and advances a step's rows as whole arrays;
    # meaningful while the request is admitted (a released one's slot is reused).
    @property
    def num_linked(self) -> int:
        return int(self.links.linked[self.slot])

    @num_linked.setter
    def num_linked(self, v: int) -> None:
        self.links.linked[self.slot] = v

    @property
    def link_serial(self) -> int:
        return int(self.links.serial[self.slot])

    @link_serial.setter
    def link_serial(self, v: int) -> None:
        self.links.serial[self.slot] = v

    @property
    def link_block(self) -> int:
        return int(self.links.block[self.slot])

    @link_block.setter
    def link_block(self, v: int) -> None:
        self.links.block[self.slot] = v

    @property
    def remaining(self) -> int:
        return self.prompt_len - self.num_scheduled

    @property
    def chain(self) -> tuple:
        """The cache chain as (linked blocks, serial of the last link)."""
        return self.num_linked, self.link_serial
