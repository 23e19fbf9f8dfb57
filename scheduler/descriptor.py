"""Fixed-capacity batch descriptors: NumPy arrays padded to a capture bucket."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from .errors import DescriptorError as DescriptorError  # re-exported
from .errors import StaleDescriptor as StaleDescriptor  # re-exported
from .fields import FIELD_DTYPES as FIELD_DTYPES  # re-exported: views of the field table
from .fields import FIELDS
from .fields import PAD_VALUES as PAD_VALUES
from .fields import TOKEN_FIELDS as TOKEN_FIELDS
from .packed import Seal
from .steps import Origin as _ORIGIN  # the scheduler's: the only origin trusted to vouch
from .validation import out_of_range_rows, validate_descriptor


class Origin(Protocol):
    """The scheduler a descriptor came from (``scheduler.steps.Origin``)."""

    def __call__(self, d: BatchDescriptor) -> None: ...  # raise unless current

    def executed(self, d: BatchDescriptor) -> None: ...  # it ran: its KV is written


@dataclass
class BatchDescriptor:
    """One prefill step. Token arrays have ``token_capacity`` rows (a capture bucket),
    sequence arrays ``seq_capacity`` rows (max_num_seqs); rows past ``num_tokens`` /
    ``num_seqs`` are padding holding safe values. Each array's dtype, shape, padding and
    bound are its entry in ``fields.FIELDS``.
    """

    input_ids: np.ndarray
    positions: np.ndarray
    slot_mapping: np.ndarray
    query_start_loc: np.ndarray  # chunk i is tokens [qsl[i], qsl[i + 1])
    seq_lens: np.ndarray  # tokens in the cache after this step
    context_lens: np.ndarray  # tokens in the cache before this step
    block_tables: np.ndarray
    logits_indices: np.ndarray  # last token of each sequence's chunk
    sample_mask: np.ndarray  # this step finishes the prompt
    temperature: np.ndarray
    top_p: np.ndarray
    top_k: np.ndarray
    min_p: np.ndarray  # 0 = off
    seeds: np.ndarray
    copy_lens: np.ndarray  # [S] slots copied into the row's block (sub-block reuse)
    copy_src_slots: np.ndarray  # [C] KV slot each copy reads ...
    copy_dst_slots: np.ndarray  # [C] ... and the slot it writes, before the forward
    num_tokens: int
    num_seqs: int
    request_ids: tuple[str, ...]
    block_size: int
    num_kv_blocks: int
    vocab_size: int
    max_model_len: int
    # each real row's prompt length: validate() proves sample_mask from it
    prompt_lens: tuple[int, ...] = ()
    # Origin: which scheduler issued it, its step, and each row's serial (a request
    # aborted and re-added under the same id, or rescheduled, gets a new one).
    scheduler_id: str = ""
    step: int = -1
    arrivals: tuple[int, ...] = ()
    origin: Origin | None = field(default=None, repr=False, compare=False)

    def check_current(self) -> None:
        """Raise StaleDescriptor unless this is an un-updated step of a live scheduler
        whose every request is still the one it was scheduled for, and DescriptorError
        if its rows were changed since (no-op for a descriptor built by hand, which has
        no origin)."""
        if self.origin is not None:
            self.origin(self)

    def issued_intact(self) -> bool:
        """True only if this is an outstanding step of a live scheduler, unmodified since
        that scheduler built it (``packed.Seal``: same arrays, same bytes): it then holds
        what the scheduler validated by construction. False for anything else -- a
        descriptor built by hand, edited in any way, retired or foreign -- which
        ``validate()`` must check in full."""
        o = self.origin
        return type(o) is _ORIGIN and bool(o.intact(self))  # (not a subclass's override)

    def issued_seal(self) -> Seal | None:
        """``issued_intact()`` for the executor: the scheduler's ``packed.Seal`` of this
        step if the descriptor is exactly as issued (what its configuration check reads,
        whether it copies, ``vouch``), else None."""
        o = self.origin
        if type(o) is not _ORIGIN:
            return None
        seal = o.intact(self)
        return seal if type(seal) is Seal else None

    def mark_executed(self) -> None:
        """Tell the scheduler that issued this step that it ran: its KV is written.
        GraphExecutor calls it once it ran the step; a step never marked feeds nothing
        to the prefix cache and gets no first token. Ignored for a step that is not
        current (foreign, retired) and for a descriptor built by hand."""
        if self.origin is not None:
            self.origin.executed(self)

    @property
    def token_capacity(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def seq_capacity(self) -> int:
        return int(self.seq_lens.shape[0])

    @property
    def copy_capacity(self) -> int:
        return int(self.copy_src_slots.shape[0])

    @property
    def num_copies(self) -> int:
        """Real entries of the copy arrays (the rest copy the dummy block onto itself)."""
        return int(self.copy_lens[: self.num_seqs].sum())

    def request_of_copy(self, row: int) -> str | None:
        """Request id whose copy entry ``row`` is (None for a padding entry)."""
        ends = np.cumsum(self.copy_lens[: self.num_seqs])
        r = int(np.searchsorted(ends, row, side="right"))
        return self.request_ids[r] if r < self.num_seqs else None

    def request_of_token(self, row: int) -> str | None:
        """Request id owning token row ``row`` (None for a padding row)."""
        if row >= self.num_tokens:
            return None
        qsl = self.query_start_loc[: self.num_seqs + 1]
        return self.request_ids[int(np.searchsorted(qsl, row, side="right")) - 1]

    def request_of_seq(self, row: int) -> str | None:
        return self.request_ids[row] if row < self.num_seqs else None

    def validate(self) -> None:
        """Raise DescriptorError naming the first field and row out of range."""
        validate_descriptor(self)

    def bad_rows(self, field: str) -> list[int]:
        """Rows of ``field`` whose index would be out of range for the kernels."""
        return out_of_range_rows(self, field)


def _check_fields_match_table() -> None:
    arrays = {f.name for f in dataclasses.fields(BatchDescriptor) if f.type == "np.ndarray"}
    table = {f.name for f in FIELDS}
    if arrays != table:  # a field added to one but not the other
        raise TypeError(f"BatchDescriptor arrays and fields.FIELDS differ in {arrays ^ table}")


_check_fields_match_table()
