"""What the scheduler keeps of each step it issued, and a descriptor's link back to it.

The scheduler trusts its own record, not the descriptor: a descriptor's arrays can be
changed after it was issued, so ``check_matches`` refuses one whose rows differ (a
flipped ``sample_mask`` would otherwise move a mid-prompt row to transferring, or strand
a finishing one). ``executed`` is set only by ``BatchDescriptor.mark_executed``, which
GraphExecutor calls once it ran the step: a step nobody ran can never feed the prefix
cache, whatever tokens a caller passes to ``update``.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .errors import DescriptorError, StaleDescriptor
from .prefix_cache import NOT_CACHED, ROOT, ROOT_KEY, PrefixCache
from .sequence import Sequence

if TYPE_CHECKING:
    from .descriptor import BatchDescriptor
    from .prefill import PrefillScheduler


@dataclass(eq=False)
class StepRecord:
    """One issued, not yet updated step: its rows as scheduled, and whether it ran."""

    request_ids: tuple[str, ...]
    arrivals: tuple[int, ...]
    starts: np.ndarray  # [n] int32: context_lens, prompt tokens before the chunk
    ends: np.ndarray  # [n] int32: seq_lens, prompt tokens after it
    finishes: np.ndarray  # [n] bool: sample_mask, the chunk ends the prompt
    executed: bool = False

    @classmethod
    def of(cls, d: BatchDescriptor) -> StepRecord:
        """The rows of a freshly built descriptor (copied: the descriptor is the caller's)."""
        n = d.num_seqs
        return cls(
            d.request_ids,
            d.arrivals,
            d.context_lens[:n].copy(),
            d.seq_lens[:n].copy(),
            d.sample_mask[:n].copy(),
        )

    def mismatch(self, d: BatchDescriptor) -> DescriptorError | None:
        """The first way ``d``'s rows differ from what was issued (None: they do not)."""
        n = len(self.request_ids)
        if d.request_ids != self.request_ids or d.arrivals != self.arrivals or d.num_seqs != n:
            return DescriptorError("request_ids", 0, f"not the rows step {d.step} was issued with")
        for name, want in (
            ("sample_mask", self.finishes),
            ("seq_lens", self.ends),
            ("context_lens", self.starts),
        ):
            got = np.asarray(getattr(d, name))
            if got.ndim != 1 or got.shape[0] < n:
                return DescriptorError(name, 0, f"shape {got.shape}: not the issued rows")
            if not np.array_equal(got[:n], want):
                r = int(np.flatnonzero(got[:n] != want)[0])
                return DescriptorError(
                    name,
                    r,
                    f"changed since step {d.step} was issued: {want[r]} -> {got[r]} "
                    f"(request {self.request_ids[r]!r})",
                )
        return None

    def live_rows(self, seqs: dict[str, Sequence]) -> list[tuple[int, Sequence]]:
        """Rows whose request is still the incarnation the step was issued for."""
        get = seqs.get
        return [
            (i, seq)
            for i, (rid, arrival) in enumerate(zip(self.request_ids, self.arrivals, strict=True))
            if (seq := get(rid)) is not None and seq.arrival == arrival
        ]

    def refuse_unrun(self, step: int, rows: list[tuple[int, Sequence]], tokens) -> None:
        """ValueError unless a step nobody ran may be retired: it can no longer run (a
        row's request is gone) and claims no first token. A step that still could run
        is refused, so a caller whose executor never marks steps fails here instead of
        rescheduling the same chunk forever."""
        if len(rows) == len(self.request_ids):
            raise ValueError(
                f"step {step} has not run (no executor marked it executed) and still can: "
                "run it, or abort the requests it cannot serve, before retiring it"
            )
        claimed = [s.request_id for i, s in rows if self.finishes[i] and tokens[i] >= 0]
        if claimed:
            raise ValueError(
                f"step {step} never ran: requests {claimed} cannot have first tokens; "
                "pass -1 for their rows"
            )


def register_written(cache: PrefixCache, seq: Sequence, upto: int, block_size: int) -> None:
    """Cache ``seq``'s full blocks below prompt token ``upto`` (their KV is written) that
    its chain does not hold yet; after a NOT_CACHED link nothing more is cached."""
    for j in range(len(seq.chain), upto // block_size):
        parent_key, parent = seq.chain[-1] if seq.chain else (ROOT_KEY, ROOT)
        if parent == NOT_CACHED:
            seq.chain.append((ROOT_KEY, NOT_CACHED))
            continue
        toks = seq.prompt[j * block_size : (j + 1) * block_size]
        seq.chain.append(cache.register(int(seq.block_ids[j]), parent_key, parent, toks))


class Origin:
    """A descriptor's link back to its scheduler (weak: descriptors may outlive it)."""

    def __init__(self, scheduler: PrefillScheduler) -> None:
        self._ref = weakref.ref(scheduler)

    def __call__(self, d: BatchDescriptor) -> None:
        s = self._ref()
        if s is None:
            raise StaleDescriptor(f"the scheduler {d.scheduler_id!r} that issued it is gone")
        s.check_current(d)

    def executed(self, d: BatchDescriptor) -> None:
        s = self._ref()
        if s is not None:
            s._mark_executed(d)
