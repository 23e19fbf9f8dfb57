"""The one table of BatchDescriptor array fields: dtype, shape, padding and index bound.

The builder (``builder.py``), ``validate()`` (``validation.py``) and the executor's
static buffers (``executor/static_buffers.py``) all iterate ``FIELDS``; a field is added
here, as an attribute of ``BatchDescriptor``, and where its real rows are computed. The
sampling fields come from the sampling value rules (``graphbatch.sampling``).
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from graphbatch.sampling import SAMPLING_RULES

from .config import DUMMY_BLOCK

if TYPE_CHECKING:
    from .descriptor import BatchDescriptor


class Axis(enum.Enum):
    """What a field's rows are, and so its shape."""

    TOKENS = "token rows"  # [T]: T = the capture bucket (static buffers: the budget)
    SEQS = "seq rows"  # [S]: S = max_num_seqs
    SEQS_PLUS_ONE = "seq rows + 1"  # [S + 1]: query_start_loc
    SEQ_BLOCKS = "seq rows x max_blocks"  # [S, MB]: block_tables
    COPIES = "copy slots"  # [C]: C = SchedulerConfig.max_copy_slots, sub-block copies

    def shape(self, tokens: int, seqs: int, max_blocks: int, copies: int) -> tuple[int, ...]:
        if self is Axis.TOKENS:
            return (tokens,)
        if self is Axis.SEQS:
            return (seqs,)
        if self is Axis.SEQS_PLUS_ONE:
            return (seqs + 1,)
        if self is Axis.COPIES:
            return (copies,)
        return (seqs, max_blocks)


def split_positions(positions: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(block index, offset in the block) of each position (shifts for a power of two)."""
    if block_size & (block_size - 1) == 0:
        shift = block_size.bit_length() - 1
        return positions >> shift, positions & (block_size - 1)
    return positions // block_size, positions % block_size


def token_slots(
    block_tables: np.ndarray, seq_of_token: np.ndarray, positions: np.ndarray, block_size: int
) -> np.ndarray:
    """KV slot each real token writes: its position's cell of its sequence's block table."""
    col, off = split_positions(positions, block_size)
    width = block_tables.shape[1]
    blocks = block_tables.ravel().take(seq_of_token * width + col).astype(np.int64)
    return blocks * block_size + off


@functools.lru_cache(maxsize=64)
def _padding_slots(rows: int, block_size: int) -> np.ndarray:
    out = DUMMY_BLOCK * block_size + np.arange(rows, dtype=np.int64) % block_size
    out.flags.writeable = False  # shared by every call: copied into each array
    return out


def padding_slots(rows: int, block_size: int) -> np.ndarray:
    """KV slots of ``rows`` padding tokens: spread over the dummy block's slots, which
    no request owns and no attention reads."""
    return _padding_slots(rows, block_size)


# A padding value, or a function (rows, block_size, num_tokens) -> the rows' values.
Pad = int | float | bool | Callable[[int, int, int], "np.ndarray | int"]
# The half-open [lo, hi) every entry of an index field must stay in, given the descriptor.
Bound = Callable[["BatchDescriptor"], tuple[int, int]]


@dataclass(frozen=True)
class FieldSpec:
    """One BatchDescriptor array: its dtype, shape kind, padding and index bound."""

    name: str
    dtype: np.dtype
    axis: Axis
    pad: Pad  # what every padding row holds: nothing a kernel reads from it is out of range
    bound: Bound | None = None  # None: a value field (sample_mask, sampling parameters)

    def padded(self, shape: tuple[int, ...], block_size: int, num_tokens: int) -> np.ndarray:
        """A fresh array of ``shape`` whose every row holds padding."""
        if not callable(self.pad) and self.pad == 0:
            return np.zeros(shape, self.dtype)  # calloc: no pass over the memory
        out = np.empty(shape, self.dtype)
        self.fill_padding(out, block_size, num_tokens)
        return out

    def fill_padding(self, out: np.ndarray, block_size: int, num_tokens: int) -> None:
        """Write padding into every row of ``out`` (in place)."""
        pad = self.pad
        out[...] = pad(out.shape[0], block_size, num_tokens) if callable(pad) else pad


FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("input_ids", np.dtype(np.int64), Axis.TOKENS, 0, lambda d: (0, d.vocab_size)),
    FieldSpec("positions", np.dtype(np.int64), Axis.TOKENS, 0, lambda d: (0, d.max_model_len)),
    FieldSpec(
        "slot_mapping",
        np.dtype(np.int64),
        Axis.TOKENS,
        lambda rows, block_size, _: padding_slots(rows, block_size),
        lambda d: (0, d.num_kv_blocks * d.block_size),
    ),
    FieldSpec(  # padding entries equal num_tokens: empty chunks past the last sequence
        "query_start_loc",
        np.dtype(np.int32),
        Axis.SEQS_PLUS_ONE,
        lambda _rows, _block_size, num_tokens: num_tokens,
        lambda d: (0, d.num_tokens + 1),
    ),
    # tokens in the cache after / before this step
    FieldSpec("seq_lens", np.dtype(np.int32), Axis.SEQS, 0, lambda d: (0, d.max_model_len + 1)),
    FieldSpec("context_lens", np.dtype(np.int32), Axis.SEQS, 0, lambda d: (0, d.max_model_len)),
    FieldSpec(
        "block_tables",
        np.dtype(np.int32),
        Axis.SEQ_BLOCKS,
        DUMMY_BLOCK,
        lambda d: (0, d.num_kv_blocks),
    ),
    # last token of each sequence's chunk
    FieldSpec("logits_indices", np.dtype(np.int64), Axis.SEQS, 0, lambda d: (0, d.token_capacity)),
    FieldSpec("sample_mask", np.dtype(np.bool_), Axis.SEQS, False),  # the step ends the prompt
    # Sub-block reuse: before the forward, the step copies the KV of slot
    # copy_src_slots[i] into copy_dst_slots[i] in every KV cache tensor. Row r's
    # copy_lens[r] entries come in row order: the first slots of its block at column
    # context_lens[r] // block_size, read from the same offsets of one cached block;
    # padding entries copy the dummy block onto itself.
    FieldSpec("copy_lens", np.dtype(np.int32), Axis.SEQS, 0, lambda d: (0, d.block_size)),
    FieldSpec(
        "copy_src_slots",
        np.dtype(np.int64),
        Axis.COPIES,
        lambda rows, block_size, _: padding_slots(rows, block_size),
        lambda d: (0, d.num_kv_blocks * d.block_size),
    ),
    FieldSpec(
        "copy_dst_slots",
        np.dtype(np.int64),
        Axis.COPIES,
        lambda rows, block_size, _: padding_slots(rows, block_size),
        lambda d: (0, d.num_kv_blocks * d.block_size),
    ),
    *(FieldSpec(r.field, r.dtype, Axis.SEQS, r.pad) for r in SAMPLING_RULES),
)
FIELD_OF: dict[str, FieldSpec] = {f.name: f for f in FIELDS}

# Views of the table by name, for callers that want one property of every field.
FIELD_DTYPES: dict[str, np.dtype] = {f.name: f.dtype for f in FIELDS}
PAD_VALUES: dict[str, int | float | bool] = {f.name: f.pad for f in FIELDS if not callable(f.pad)}
TOKEN_FIELDS: tuple[str, ...] = tuple(f.name for f in FIELDS if f.axis is Axis.TOKENS)
COPY_FIELDS: tuple[str, ...] = tuple(f.name for f in FIELDS if f.axis is Axis.COPIES)
