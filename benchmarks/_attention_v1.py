"""Frozen copy of ``kernels/paged_attention.py`` before the GQA-packed / wgmma rewrite (v1).

For ``benchmarks/attention_cost.py`` only (old vs new cost); not imported by the package.

Causal prefill attention over a paged KV cache, bounds-checked.

One program per (query block of one sequence, head): the BLOCK_M query rows of a tile
share their sequence, so each K/V tile [BLOCK_N, D] is read once per tile and both
products are ``tl.dot``. Sequence s owns query blocks starting at qsl[s] // BLOCK_M + s
(the upper bound T // BLOCK_M + S + 1 programs covers every split); a last virtual
sequence covers the padding tail [qsl[S], T), whose rows get zeros. Keys j <= position
and j < seq_len are read through ``block_tables``; a block id outside [0, num_blocks)
is redirected to block 0 and its token row is counted.
"""

from __future__ import annotations

from typing import Any

import _legacy_runtime as rt  # noqa: I001  (torch-only helpers, as when frozen)
import torch
import triton
import triton.language as tl
from graphbatch.kernels import native
from graphbatch.kernels._checked import count_bad_rows

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _paged_attention_kernel(
    q_ptr,  # [T, H, D]
    k_cache_ptr,  # [num_blocks * block_size, HKV, D]
    v_cache_ptr,  # [num_blocks * block_size, HKV, D]
    block_tables_ptr,  # [S, MB] int32
    qsl_ptr,  # [S + 1] int32
    seq_lens_ptr,  # [S] int32
    positions_ptr,  # [T] int64
    out_ptr,  # [T, H, D]
    err_ptr,  # [2] int32: (bad token rows, first bad row)
    T,
    S,
    MB,
    num_blocks,
    scale,
    H: tl.constexpr,
    HKV: tl.constexpr,
    D: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    HAS_ERR: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_S: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    h = tl.program_id(1)
    hkv = h // (H // HKV)
    d = tl.arange(0, D)
    # this program's sequence: the last s in [0, S] whose first query block is <= pid
    sidx = tl.arange(0, BLOCK_S)
    starts = tl.load(qsl_ptr + sidx, mask=sidx <= S, other=2147483647)
    first_block = tl.where(sidx <= S, starts // BLOCK_M + sidx, 2147483647)
    seq = tl.sum((first_block <= pid).to(tl.int32), 0) - 1
    q_start = tl.sum(tl.where(sidx == seq, starts, 0), 0)
    q_end = tl.where(seq < S, tl.sum(tl.where(sidx == seq + 1, starts, 0), 0), T)
    rows = q_start + (pid - (q_start // BLOCK_M + seq)) * BLOCK_M + tl.arange(0, BLOCK_M)
    in_tile = (rows < q_end) & (rows < T) & (rows >= 0)
    real = in_tile & ((rows * 0 + seq) < S)  # as a vector: the interpreter wants a bool tensor
    seq_safe = tl.where(seq < S, seq, 0)
    seq_len = tl.where(seq < S, tl.load(seq_lens_ptr + seq_safe), 0)  # S >= 1: always in range
    pos = tl.load(positions_ptr + rows, mask=real, other=0).to(tl.int32)
    kv_len = tl.where(real, tl.minimum(pos + 1, seq_len), 0)  # causal, never past the sequence

    q = tl.load(
        q_ptr + (rows.to(tl.int64) * H + h)[:, None] * D + d[None, :], mask=real[:, None], other=0.0
    )
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    bad = tl.zeros([BLOCK_M], tl.int32)
    bt_row = block_tables_ptr + seq_safe.to(tl.int64) * MB
    for start in range(0, tl.max(kv_len, 0), BLOCK_N):
        j = start + tl.arange(0, BLOCK_N)
        col = j // BLOCK_SIZE
        col_ok = col < MB
        j_live = j < seq_len
        bt = tl.load(bt_row + col, mask=j_live & col_ok, other=0)
        blk_ok = (bt >= 0) & (bt < num_blocks) & col_ok
        slot = tl.where(blk_ok, bt, 0).to(tl.int64) * BLOCK_SIZE + j % BLOCK_SIZE
        kv_off = (slot * HKV + hkv)[:, None] * D + d[None, :]  # [N, D]
        k = tl.load(k_cache_ptr + kv_off, mask=j_live[:, None], other=0.0)
        live = j[None, :] < kv_len[:, None]  # [M, N]
        bad |= tl.max((live & ~blk_ok[None, :]).to(tl.int32), 1)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
        s = tl.where(live, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m_i - m_safe)
        p = tl.exp(s - m_safe[:, None])
        v = tl.load(v_cache_ptr + kv_off, mask=j_live[:, None], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        l_i = l_i * alpha + tl.sum(p, 1)
        m_i = m_new
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    tl.store(
        out_ptr + (rows.to(tl.int64) * H + h)[:, None] * D + d[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=in_tile[:, None],
    )
    if HAS_ERR:
        count_bad_rows(err_ptr, (bad > 0) & (h == 0), rows)


def _tiles(D: int, dtype: torch.dtype) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps); the compile gate checks none of them spills."""
    if rt.gpu_tiles():
        if dtype == torch.float32:  # exact fp32 dots run on FMA units: small tiles
            return (16, 16, 4) if D <= 128 else (16, 16, 8)
        return (32, 32, 4) if D <= 128 else (16, 32, 4)
    return 64, 64, 4  # the interpreter pays per program: fewer, larger tiles


def paged_attention(
    q: Any,
    k_cache: Any,
    v_cache: Any,
    block_tables: Any,
    query_start_loc: Any,
    seq_lens: Any,
    positions: Any,
    block_size: int,
    scale: float,
    out: Any = None,
    error_counter: Any = None,
) -> Any:
    """Causal attention of ``q`` [T, H, D] over paged ``k_cache``/``v_cache``
    [num_slots, HKV, D]; returns ``out`` [T, H, D] (zeros for padding tokens)."""
    qt = rt.to_torch(q, "q")
    kc, vc = rt.to_torch(k_cache, "k_cache"), rt.to_torch(v_cache, "v_cache")
    bt = rt.to_torch(block_tables, "block_tables")
    qsl, sl = rt.to_torch(query_start_loc, "query_start_loc"), rt.to_torch(seq_lens, "seq_lens")
    pos = rt.to_torch(positions, "positions")
    if qt.dim() != 3 or kc.dim() != 3 or kc.shape != vc.shape:
        raise ValueError(f"q must be [T, H, D], caches [slots, HKV, D]: {qt.shape}, {kc.shape}")
    T, H, D = qt.shape
    HKV = kc.shape[1]
    if kc.shape[2] != D or H % HKV or D & (D - 1) or D < 16:
        raise ValueError(
            f"head_dim {D} must match caches and be a power of two >= 16; "
            f"H={H} must be a multiple of HKV={HKV}"
        )
    if kc.shape[0] % block_size:
        raise ValueError(f"cache slots {kc.shape[0]} not a multiple of block_size {block_size}")
    S = sl.shape[0]
    if S == 0:
        raise ValueError("seq_lens is empty: need at least one sequence row")
    if bt.dim() != 2 or bt.shape[0] != S or qsl.shape != (S + 1,) or pos.shape != (T,):
        raise ValueError("block_tables [S, MB], query_start_loc [S+1], positions [T] expected")
    for name, t, dt in (
        ("block_tables", bt, torch.int32),
        ("query_start_loc", qsl, torch.int32),
        ("seq_lens", sl, torch.int32),
        ("positions", pos, torch.int64),
    ):
        if t.dtype != dt or not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous {dt}, got {t.dtype}")
    if qt.dtype not in _FLOAT_DTYPES or kc.dtype != qt.dtype or vc.dtype != qt.dtype:
        raise ValueError(
            f"q, k_cache, v_cache must share one of fp32/fp16/bf16, got "
            f"{qt.dtype}, {kc.dtype}, {vc.dtype}"
        )
    for name, t in (("q", qt), ("k_cache", kc), ("v_cache", vc)):
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous")
    device = rt.same_device(
        {"q": qt, "k_cache": kc, "v_cache": vc, "block_tables": bt, "query_start_loc": qsl}
    )
    rt.same_device({"q": qt, "seq_lens": sl, "positions": pos})
    if out is None:
        out_t, out = rt.new_output(tuple(qt.shape), qt.dtype, device, q)
    else:
        out_t = rt.to_torch(out, "out")
        if tuple(out_t.shape) != tuple(qt.shape) or out_t.dtype != qt.dtype:
            raise ValueError(
                f"out must be {qt.dtype} {tuple(qt.shape)}, got {out_t.dtype} {tuple(out_t.shape)}"
            )
        if not out_t.is_contiguous():
            raise ValueError("out must be contiguous")
        rt.same_device({"q": qt, "out": out_t})
    err = rt.check_error_counter(error_counter, device)
    if T == 0:
        return out
    if rt.use_native(qt):
        native.paged_attention(qt, kc, vc, bt, qsl, sl, pos, block_size, scale, out_t, err)
        return out
    bm, bn, warps = _tiles(D, qt.dtype)
    grid = (T // bm + S + 1, H)
    with rt.launch_stream(q), rt.quiet_interpreter():
        _paged_attention_kernel[grid](
            qt,
            kc,
            vc,
            bt,
            qsl,
            sl,
            pos,
            out_t,
            err if err is not None else sl,
            T,
            S,
            bt.shape[1],
            kc.shape[0] // block_size,
            scale,
            H=H,
            HKV=HKV,
            D=D,
            BLOCK_SIZE=block_size,
            HAS_ERR=err is not None,
            BLOCK_M=bm,
            BLOCK_N=bn,
            BLOCK_S=rt.next_pow2(S + 1),
            PRECISION="ieee" if qt.dtype == torch.float32 else "tf32",
            num_warps=warps,
            maxnreg=255,  # an explicit cap: without one ptxas may pick ~60 registers and spill
        )
    return out
