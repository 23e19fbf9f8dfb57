"""The pieces every model here shares: RMSNorm and "write K/V, then attend" over the
paged cache (the only step that touches the cache, so both models write it alike)."""

from __future__ import annotations

from typing import Any

from graphbatch.executor.backends import Backend
from graphbatch.executor.static_buffers import ModelInputs
from graphbatch.kernels import scatter_slots
from graphbatch.kernels.paged_attention import paged_attention


def rms_norm(b: Backend, x: Any, weight: Any, eps: float, dtype: str) -> Any:
    """RMSNorm computed in float32, cast back to ``dtype``, then scaled (HF's order)."""
    x32 = b.cast(x, "float32")
    y = x32 * b.rsqrt((x32 * x32).mean(-1, keepdim=True) + eps)
    return b.cast(y, dtype) * weight


def cached_attention(
    inp: ModelInputs,
    q: Any,
    k: Any,
    v: Any,
    k_cache: Any,
    v_cache: Any,
    scale: float,
    layer: int | None = None,
) -> Any:
    """Write this step's K/V [T, HKV, D] at ``slot_mapping``, then causal attention of
    q [T, H, D] over each sequence's cached keys; bad indices are counted, never used.
    The layer's KV is complete once written: ``inp.layer_done(layer)`` says so (a
    layer-wise KV sender may post it while the later layers run)."""
    err = inp.errors
    scatter_slots(k_cache, inp.slot_mapping, k, error_counter=err["slot_mapping"])
    scatter_slots(v_cache, inp.slot_mapping, v, error_counter=err["slot_mapping"])
    if inp.layer_done is not None and layer is not None:
        inp.layer_done(layer)
    return paged_attention(
        q,
        k_cache,
        v_cache,
        inp.block_tables,
        inp.query_start_loc,
        inp.seq_lens,
        inp.positions,
        inp.block_size,
        scale,
        error_counter=err["block_tables"],
    )
