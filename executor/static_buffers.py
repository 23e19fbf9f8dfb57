"""Static (graph-captured) input buffers: the only code that writes them.

Every buffer is a typed view into one device byte buffer allocated once at full
capacity, so captured graphs keep valid addresses, and ``load`` rewrites every row of
every buffer each step -- padding and sampling parameters included -- so nothing from
an earlier, larger batch survives. The host stages all fields in one byte buffer
(pinned on torch) and the step costs one host-to-device copy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from graphbatch.scheduler import BatchDescriptor, DescriptorError, SchedulerConfig
from graphbatch.scheduler.fields import FIELDS, Axis

from .backends import Backend

INT32_MAX = 2**31 - 1
ALIGN = 64  # bytes: every field starts aligned (vector loads, Triton's 16-divisibility)
# Device error counters, one (count, first row) pair per bounds check.
CHECKS = (
    "input_ids",
    "positions",
    "slot_mapping",
    "block_tables",
    "logits_indices",
    "sampler",
    "copy_src_slots",
    "copy_dst_slots",
)
EXTRA_DTYPES = {
    "offsets": np.dtype(np.int64),
    "num_valid": np.dtype(np.int32),
    "errors": np.dtype(np.int32),
    "step": np.dtype(np.int64),  # the descriptor's step number (layer_signal reads it)
}


@dataclass
class ModelInputs:
    """Views of the static buffers for one token bucket (what a model may read)."""

    num_tokens: int  # the bucket: rows in the token arrays
    input_ids: Any  # [T] int64
    positions: Any  # [T] int64
    slot_mapping: Any  # [T] int64
    query_start_loc: Any  # [S + 1] int32
    seq_lens: Any  # [S] int32
    context_lens: Any  # [S] int32
    block_tables: Any  # [S, MB] int32
    logits_indices: Any  # [S] int64
    errors: dict[str, Any]  # check name -> int32 [2] counter view
    block_size: int
    # called with a layer's index once its K/V are written (layer-wise KV transfer);
    # None: nobody listens
    layer_done: Callable[[int], None] | None = None


class StaticBuffers:
    def __init__(self, backend: Backend, config: SchedulerConfig) -> None:
        self.backend, self.config = backend, config
        T, S, MB = config.max_num_batched_tokens, config.max_num_seqs, config.max_blocks_per_seq
        shapes = {f.name: f.axis.shape(T, S, MB, config.max_copy_slots) for f in FIELDS}
        shapes.update(offsets=(S,), num_valid=(1,), errors=(len(CHECKS), 2), step=(1,))
        dtypes = {**{f.name: f.dtype for f in FIELDS}, **EXTRA_DTYPES}
        offsets, total = {}, 0
        for name, shape in shapes.items():
            offsets[name] = total
            nbytes = int(np.prod(shape)) * dtypes[name].itemsize
            total += -(-nbytes // ALIGN) * ALIGN
        self._device_bytes = backend.empty((total,), "uint8")
        self._host_bytes, host = backend.staging((total,), np.dtype(np.uint8))
        self.device: dict[str, Any] = {}
        self.host: dict[str, np.ndarray] = {}
        for name, shape in shapes.items():
            o, dt = offsets[name], dtypes[name]
            self.device[name] = backend.typed_view(self._device_bytes, o, shape, dt)
            n = int(np.prod(shape)) * dt.itemsize
            self.host[name] = host[o : o + n].view(dt).reshape(shape)
        self.errors = {c: self.device["errors"][i] for i, c in enumerate(CHECKS)}
        self.load_padding()

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["device"][name]
        except KeyError:
            raise AttributeError(name) from None

    def _stage_padding(self, num_tokens: int = 0) -> None:
        h = self.host
        for f in FIELDS:
            f.fill_padding(h[f.name], self.config.block_size, num_tokens)
        h["offsets"][:] = 0
        h["num_valid"][:] = 0

    def load_padding(self) -> None:
        """Safe empty batch: every row padding (used for warm-up and capture)."""
        self._stage_padding()
        self._flush()

    def load(self, d: BatchDescriptor) -> None:
        """Rewrite every row of every buffer from ``d`` (one copy for all fields)."""
        cfg, h = self.config, self.host
        T = d.token_capacity
        if T > cfg.max_num_batched_tokens:
            raise DescriptorError(
                "input_ids",
                T,
                f"token capacity {T} exceeds max_num_batched_tokens {cfg.max_num_batched_tokens}",
            )
        self._stage_padding(d.num_tokens)
        for f in FIELDS:
            src, dst = getattr(d, f.name), h[f.name]
            if f.axis is Axis.TOKENS:  # the bucket's rows; the rest stay padding
                dst = dst[:T]
            if src.shape != dst.shape:
                raise DescriptorError(f.name, 0, f"shape {src.shape} != {dst.shape}")
            if f.name == "block_tables":  # the step's rows: padding rows are never read
                n = d.num_seqs
                dst[:n] = src[:n]
            else:
                dst[...] = src
        h["offsets"][:] = d.seq_lens  # RNG offset: the position of the sampled token
        h["num_valid"][0] = d.num_seqs
        h["step"][0] = d.step  # the layer-readiness flags say which step wrote a layer
        self._flush()

    def _flush(self) -> None:
        self.host["errors"][:, 0] = 0
        self.host["errors"][:, 1] = INT32_MAX
        self.backend.copy_to_device(self._device_bytes, self._host_bytes)

    def view(self, num_tokens: int) -> ModelInputs:
        d = self.device
        return ModelInputs(
            num_tokens=num_tokens,
            input_ids=d["input_ids"][:num_tokens],
            positions=d["positions"][:num_tokens],
            slot_mapping=d["slot_mapping"][:num_tokens],
            query_start_loc=d["query_start_loc"],
            seq_lens=d["seq_lens"],
            context_lens=d["context_lens"],
            block_tables=d["block_tables"],
            logits_indices=d["logits_indices"],
            errors=self.errors,
            block_size=self.config.block_size,
        )

    def read_errors(self) -> dict[str, tuple[int, int]]:
        arr = self.backend.to_numpy(self.device["errors"])
        return {c: (int(arr[i, 0]), int(arr[i, 1])) for i, c in enumerate(CHECKS)}
