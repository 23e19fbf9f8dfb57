"""What the scheduler keeps of each step it issued, and a descriptor's link back to it.

The scheduler trusts its own record, not the descriptor: a descriptor's arrays can be
changed after it was issued, so ``mismatch`` refuses one whose rows differ (a flipped
``sample_mask`` would otherwise move a mid-prompt row to transferring, or strand a
finishing one; a changed copy slot would read another block). ``executed`` is set only
by ``BatchDescriptor.mark_executed``, which GraphExecutor calls once it ran the step: a
step nobody ran can never feed the prefix cache, whatever tokens a caller passes to
``update``.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .errors import DescriptorError, StaleDescriptor
from .packed import Seal

if TYPE_CHECKING:
    from .descriptor import BatchDescriptor
    from .prefill import PrefillScheduler
    from .store import Links


@dataclass(eq=False)
class StepRecord:
    """One issued, not yet updated step: its rows as scheduled, and whether it ran."""

    request_ids: tuple[str, ...]
    arrivals: tuple[int, ...]
    starts: np.ndarray  # [n] int32: context_lens, prompt tokens before the chunk
    ends: np.ndarray  # [n] int32: seq_lens, prompt tokens after it
    finishes: np.ndarray  # [n] bool: sample_mask, the chunk ends the prompt
    copy_lens: np.ndarray  # [n] int32: slots copied into the row's block first
    copy_src: np.ndarray  # [k] int64: the real copy entries
    copy_dst: np.ndarray  # [k] int64
    slots: np.ndarray  # [n] int64: the rows' RequestStore slots
    incarnations: np.ndarray  # [n] int64: their arrivals: a row is live while its slot's is
    epoch: int  # the scheduler's epoch then: unchanged, every row is still live
    executed: bool = False

    seal: Seal | None = None  # the bytes issued: proves a descriptor unmodified

    @classmethod
    def of(
        cls,
        d: BatchDescriptor,
        slots: np.ndarray,
        incarnations: np.ndarray,
        epoch: int,
        seal: Seal,
        copied: int,
    ) -> StepRecord:
        """The rows of a freshly built descriptor: views of the seal's private copy of
        its bytes (the descriptor itself is the caller's)."""
        ends, starts, copy_lens, finishes, src, dst = seal.issued_rows(d.num_seqs, copied)
        return cls(
            d.request_ids,
            d.arrivals,
            starts,
            ends,
            finishes,
            copy_lens,
            src,
            dst,
            slots,
            incarnations,
            epoch,
            seal=seal,
        )

    def mismatch(self, d: BatchDescriptor) -> DescriptorError | None:
        """The first way ``d``'s rows differ from what was issued (None: they do not)."""
        n = len(self.request_ids)
        ids, arrivals = d.request_ids, d.arrivals  # (the issued tuples: compared by identity)
        if (
            (ids is not self.request_ids and ids != self.request_ids)
            or (arrivals is not self.arrivals and arrivals != self.arrivals)
            or d.num_seqs != n
        ):
            return DescriptorError("request_ids", 0, f"not the rows step {d.step} was issued with")
        if self.seal is not None and self.seal.rows_intact(d):
            return None  # the issued arrays, their bytes unchanged
        k = self.copy_src.shape[0]
        for name, want, size in (
            ("sample_mask", self.finishes, n),
            ("seq_lens", self.ends, n),
            ("context_lens", self.starts, n),
            ("copy_lens", self.copy_lens, n),
            ("copy_src_slots", self.copy_src, k),
            ("copy_dst_slots", self.copy_dst, k),
        ):
            got = getattr(d, name)
            if not isinstance(got, np.ndarray) or got.ndim != 1 or got.shape[0] < size:
                shape = getattr(got, "shape", None)
                return DescriptorError(name, 0, f"shape {shape}: not the issued rows")
            if not np.array_equal(got[:size], want):
                r = int(np.flatnonzero(got[:size] != want)[0])
                owner = self.request_ids[r] if name[:5] != "copy_" or name == "copy_lens" else None
                return DescriptorError(
                    name,
                    r,
                    f"changed since step {d.step} was issued: {want[r]} -> {got[r]}"
                    + (f" (request {owner!r})" if owner is not None else ""),
                )
        return None

    def live(self, links: Links, epoch: int) -> np.ndarray | None:
        """Which rows' requests are still the incarnation the step was issued for (None:
        all of them -- the scheduler's epoch did not move: nothing was dropped or
        rewound). A slot's arrival changes with its incarnation (-1 once free)."""
        if epoch == self.epoch:
            return None
        return links.arrival[self.slots] == self.incarnations

    def refuse_unrun(self, step: int, live: np.ndarray | None, tokens: np.ndarray) -> None:
        """ValueError unless a step nobody ran may be retired: it can no longer run (a
        row's request is gone) and claims no first token. A step that still could run
        is refused, so a caller whose executor never marks steps fails here instead of
        rescheduling the same chunk forever."""
        if live is None or np.count_nonzero(live) == live.shape[0]:
            raise ValueError(
                f"step {step} has not run (no executor marked it executed) and still can: "
                "run it, or abort the requests it cannot serve, before retiring it"
            )
        claims = live & self.finishes & (tokens >= 0)
        if np.count_nonzero(claims):
            claimed = [self.request_ids[i] for i in np.flatnonzero(claims).tolist()]
            raise ValueError(
                f"step {step} never ran: requests {claimed} cannot have first tokens; "
                "pass -1 for their rows"
            )


class Origin:
    """A descriptor's link back to its scheduler (weak: descriptors may outlive it)."""

    def __init__(self, scheduler: PrefillScheduler) -> None:
        self._ref = weakref.ref(scheduler)

    def __call__(self, d: BatchDescriptor) -> None:
        s = self._ref()
        if s is None:
            raise StaleDescriptor(f"the scheduler {d.scheduler_id!r} that issued it is gone")
        s.check_current(d)

    def intact(self, d: BatchDescriptor) -> Seal | bool | None:
        """``d`` is a current step of the live scheduler, exactly as it was issued: its
        ``Seal`` (true) if so (``Seal.intact``, passed through), else false."""
        s = self._ref()
        return s is not None and s._intact(d)

    def executed(self, d: BatchDescriptor) -> None:
        s = self._ref()
        if s is not None:
            s._mark_executed(d)
