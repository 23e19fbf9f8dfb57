"""Fixed-capacity batch descriptors: NumPy arrays padded to a capture bucket."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from .config import DUMMY_BLOCK

# Dtype of every array field; the executor's static buffers use the same.
FIELD_DTYPES: dict[str, np.dtype] = {
    "input_ids": np.dtype(np.int64),
    "positions": np.dtype(np.int64),
    "slot_mapping": np.dtype(np.int64),
    "query_start_loc": np.dtype(np.int32),
    "seq_lens": np.dtype(np.int32),
    "context_lens": np.dtype(np.int32),
    "block_tables": np.dtype(np.int32),
    "logits_indices": np.dtype(np.int64),
    "sample_mask": np.dtype(np.bool_),
    "temperature": np.dtype(np.float32),
    "top_p": np.dtype(np.float32),
    "top_k": np.dtype(np.int32),
    "min_p": np.dtype(np.float32),
    "seeds": np.dtype(np.int64),
}
TOKEN_FIELDS = ("input_ids", "positions", "slot_mapping")

# Values every padding row holds: nothing a kernel reads from them can be out of range.
PAD_VALUES: dict[str, float | int | bool] = {
    "input_ids": 0,
    "positions": 0,
    "slot_mapping": DUMMY_BLOCK,  # padding slots fall inside the dummy block
    "seq_lens": 0,
    "context_lens": 0,
    "block_tables": DUMMY_BLOCK,
    "logits_indices": 0,
    "sample_mask": False,
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": 0,
    "min_p": 0.0,
    "seeds": 0,
}


class DescriptorError(ValueError):
    """A descriptor array holds a value outside its range; names field and row."""

    def __init__(self, field: str, row: int | tuple[int, ...], message: str) -> None:
        super().__init__(f"{field}[{row}]: {message}")
        self.field = field
        self.row = row


class StaleDescriptor(ValueError):
    """The descriptor is not (or no longer) a current step of the scheduler asked."""


class Origin(Protocol):
    """The scheduler a descriptor came from (``scheduler.steps.Origin``)."""

    def __call__(self, d: BatchDescriptor) -> None: ...  # raise unless current

    def executed(self, d: BatchDescriptor) -> None: ...  # it ran: its KV is written


@dataclass
class BatchDescriptor:
    """One prefill step. Token arrays have ``token_capacity`` rows (a capture bucket),
    sequence arrays ``seq_capacity`` rows (max_num_seqs); rows past ``num_tokens`` /
    ``num_seqs`` are padding holding safe values.
    """

    input_ids: np.ndarray  # [T] int64
    positions: np.ndarray  # [T] int64
    slot_mapping: np.ndarray  # [T] int64
    query_start_loc: np.ndarray  # [S + 1] int32
    seq_lens: np.ndarray  # [S] int32: tokens in the cache after this step
    context_lens: np.ndarray  # [S] int32: tokens in the cache before this step
    block_tables: np.ndarray  # [S, max_blocks_per_seq] int32
    logits_indices: np.ndarray  # [S] int64: last token of each sequence's chunk
    sample_mask: np.ndarray  # [S] bool: this step finishes the prompt
    temperature: np.ndarray  # [S] float32
    top_p: np.ndarray  # [S] float32
    top_k: np.ndarray  # [S] int32
    min_p: np.ndarray  # [S] float32 (0 = off)
    seeds: np.ndarray  # [S] int64
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
    def padding_tokens(self) -> int:
        return self.token_capacity - self.num_tokens

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
        from .validation import validate_descriptor

        validate_descriptor(self)

    def bad_rows(self, field: str) -> list[int]:
        """Rows of ``field`` whose index would be out of range for the kernels."""
        from .validation import out_of_range_rows

        return out_of_range_rows(self, field)
