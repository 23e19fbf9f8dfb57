"""Scheduler-side state of one admitted request."""

from __future__ import annotations

import enum
import operator
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


def _slot_int(array: str, doc: str) -> property:
    """An int attribute kept in ``store.Links.<array>`` at the sequence's slot."""
    column = operator.attrgetter(array)

    def get(self: Sequence) -> int:
        return int(column(self.links)[self.slot])

    def put(self: Sequence, v: int) -> None:
        column(self.links)[self.slot] = v

    return property(get, put, doc=doc)


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
    arrival = _slot_int(
        "arrival",
        "Serial of this incarnation: a new one on re-admission and on a rewind, so a step "
        "issued before it never touches the request again.",
    )
    num_scheduled = _slot_int(
        "scheduled", "Prompt tokens handed to a batch so far (cached ones included)."
    )
    num_computed = _slot_int(
        "computed",
        "Prompt tokens whose KV is known written, contiguous from 0: cached ones plus the "
        "chunks of steps an executor ran in order (PrefillScheduler._mark_executed).",
    )
    num_shared = _slot_int("shared", "Leading blocks shared from the prefix cache.")
    matched_at = _slot_int("matched", "The cache generation its prefix was last matched against.")
    copy_src = _slot_int(
        "copy_src",
        "The cached block a sub-block copy planned for its first chunk reads (pinned until "
        "that step is retired); -1: none.",
    )

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
    num_linked = _slot_int("linked", "Leading blocks its cache chain runs through.")
    link_serial = _slot_int("serial", "Serial of the chain's last link.")
    link_block = _slot_int("block", "The block holding the chain's last link.")

    @property
    def remaining(self) -> int:
        return self.prompt_len - self.num_scheduled

    @property
    def chain(self) -> tuple:
        """The cache chain as (linked blocks, serial of the last link)."""
        return self.num_linked, self.link_serial
