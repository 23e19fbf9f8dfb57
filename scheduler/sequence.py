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


PREFILLING, TRANSFERRING = 0, 1  # ``SeqState`` as stored in ``store.Links.state``
_STATES = (SeqState.PREFILLING, SeqState.TRANSFERRING)


@dataclass(eq=False)
class Sequence:
    request_id: str
    prompt: np.ndarray  # [prompt_len] int64
    sampling: SamplingParams
    seed: int
    block_ids: np.ndarray  # [num_blocks] int32, KV blocks reserved for the whole prompt
    # prompt tokens whose KV came from the prefix cache: the shared blocks, plus the
    # slots a sub-block copy brings into its own block
    num_cached: int = 0
    copy_len: int = 0  # slots of the planned sub-block copy (``copy_src``), 0: none
    # tags of its full blocks' keys (prefix_cache.chain_keys, key_tags.key_tags), taken
    # once at admission; a view into the RequestStore's arena
    tags: np.ndarray = field(default_factory=lambda: NO_TAGS)
    tag_list: list[int] = field(default_factory=list)  # the same, as ints (dict probes)
    slot: int = -1  # its row in the scheduler's RequestStore (-1: none)
    links: Links | None = field(default=None, repr=False)  # the store's per-slot arrays
    prompt_len: int = field(init=False)  # a plain int: read on every schedule() pass
    # the sampling fields of its descriptor row, in SAMPLING_RULES order
    sampling_values: tuple = field(init=False)

    def __post_init__(self) -> None:
        self.prompt_len = int(self.prompt.shape[0])
        self.sampling_values = tuple(
            getattr(self, r.param) if r.optional else getattr(self.sampling, r.param)
            for r in SAMPLING_RULES
        )

    # Everything below lives in the RequestStore's arrays at the request's slot
    # (``store.Links``), so a step reads and advances its rows as whole arrays; it is
    # meaningful while the request is admitted (a released one's slot is reused, and its
    # ``links`` is None: a late read fails loudly).
    @property
    def arrival(self) -> int:
        """Serial of this incarnation: a new one on re-admission and on a rewind, so a
        step issued before it never touches the request again."""
        return int(self.links.arrival[self.slot])

    @arrival.setter
    def arrival(self, v: int) -> None:
        self.links.arrival[self.slot] = v

    @property
    def num_scheduled(self) -> int:
        """Prompt tokens handed to a batch so far (cached ones included)."""
        return int(self.links.scheduled[self.slot])

    @num_scheduled.setter
    def num_scheduled(self, v: int) -> None:
        self.links.scheduled[self.slot] = v

    @property
    def num_computed(self) -> int:
        """Prompt tokens whose KV is known written, contiguous from 0: cached ones plus
        the chunks of steps an executor ran in order (PrefillScheduler._mark_executed)."""
        return int(self.links.computed[self.slot])

    @num_computed.setter
    def num_computed(self, v: int) -> None:
        self.links.computed[self.slot] = v

    @property
    def num_shared(self) -> int:
        """Leading blocks shared from the prefix cache."""
        return int(self.links.shared[self.slot])

    @num_shared.setter
    def num_shared(self, v: int) -> None:
        self.links.shared[self.slot] = v

    @property
    def matched_at(self) -> int:
        """The cache generation its prefix was last matched against."""
        return int(self.links.matched[self.slot])

    @matched_at.setter
    def matched_at(self, v: int) -> None:
        self.links.matched[self.slot] = v

    @property
    def copy_src(self) -> int:
        """The cached block a sub-block copy planned for its first chunk reads (pinned
        until that step is retired); -1: none."""
        return int(self.links.copy_src[self.slot])

    @copy_src.setter
    def copy_src(self, v: int) -> None:
        self.links.copy_src[self.slot] = v

    @property
    def state(self) -> SeqState:
        return _STATES[self.links.state[self.slot]]

    @state.setter
    def state(self, v: SeqState) -> None:
        self.links.state[self.slot] = _STATES.index(v)

    @property
    def first_token(self) -> int | None:
        t = int(self.links.first[self.slot])
        return None if t < 0 else t

    @first_token.setter
    def first_token(self, v: int | None) -> None:
        self.links.first[self.slot] = -1 if v is None else v

    # the cache chain through its leading blocks: how many are linked, the serial of the
    # last link (NOT_CACHED: the chain broke, nothing after it is cached) and the block
    # holding it
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
