"""Causal prefill attention over a paged KV cache, bounds-checked.

One program per (query block of one sequence, KV head). A tile's BLOCK_M rows are
(token, query head) pairs f = token * G + g of one sequence, the G = H / HKV query heads
that share the KV head packed together, so each K/V tile [BLOCK_N, D] is read once per
group and both products are ``tl.dot``. Sequence s owns the blocks starting at
qsl[s] * G // BLOCK_M + s (the upper bound T * G // BLOCK_M + S + 1 programs covers
every split); a last virtual sequence covers the padding tail [qsl[S], T), whose rows
get zeros. Keys j < kv_len = min(position + 1, seq_len) are read through
``block_tables``, one entry per page; a block id outside [0, num_blocks) (or a column
past the table) is redirected to block 0, and a token row that reads such a key is
counted once (the first bad page is found once per program, before the key loop).
Key tiles below every row's kv_len run unmasked; the diagonal / ragged ones are masked.
The softmax scale (times log2 e) is folded into Q and the softmax runs on exp2.
"""

from __future__ import annotations

from typing import Any

import triton
import triton.language as tl

from . import _runtime as rt  # noqa: I001
from ._checked import count_bad_rows
from ._tensor import Arg, same_device

_FLOAT_DTYPES = ("float32", "float16", "bfloat16")


@triton.jit
def _kv_slots(bt_row, start, MB, num_blocks, BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr):
    """[BLOCK_N] int64 cache slots of keys start.. : one block-table entry per page, a
    page id outside [0, num_blocks) (or a column past the table) redirected to block 0."""
    if BLOCK_N >= BLOCK_SIZE:
        col = start // BLOCK_SIZE + tl.arange(0, BLOCK_N // BLOCK_SIZE)
        bt = tl.load(bt_row + col, mask=col < MB, other=0)
        page = tl.where((bt >= 0) & (bt < num_blocks), bt, 0).to(tl.int64) * BLOCK_SIZE
        slot = page[:, None] + tl.arange(0, BLOCK_SIZE)[None, :]
        slot = tl.reshape(slot, [BLOCK_N])
    else:  # the tile lies inside one page (start is a multiple of BLOCK_N)
        col = start // BLOCK_SIZE
        bt = tl.load(bt_row + col, mask=col < MB, other=0)
        page = tl.where((bt >= 0) & (bt < num_blocks), bt, 0).to(tl.int64) * BLOCK_SIZE
        slot = page + (start % BLOCK_SIZE) + tl.arange(0, BLOCK_N)
    return slot


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
    qk_scale,  # softmax scale * log2(e): folded into Q, the softmax runs on exp2
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
    G: tl.constexpr = H // HKV  # query heads per KV head: packed into one tile's rows
    pid = tl.program_id(0)
    hkv = tl.program_id(1)
    d = tl.arange(0, D)
    # tile rows are (token, head of the group) pairs, f = token * G + g: sequence s owns
    # f in [qsl[s] * G, qsl[s + 1] * G), and its first tile is qsl[s] * G // BLOCK_M + s
    sidx = tl.arange(0, BLOCK_S)
    starts = tl.load(qsl_ptr + sidx, mask=sidx <= S, other=2147483647)
    first_block = tl.where(sidx <= S, (starts * G) // BLOCK_M + sidx, 2147483647)
    seq = tl.sum((first_block <= pid).to(tl.int32), 0) - 1
    q_start = tl.sum(tl.where(sidx == seq, starts, 0), 0)
    q_end = tl.where(seq < S, tl.sum(tl.where(sidx == seq + 1, starts, 0), 0), T)
    f = q_start * G + (pid - ((q_start * G) // BLOCK_M + seq)) * BLOCK_M + tl.arange(0, BLOCK_M)
    tok = f // G
    head = hkv * G + f % G
    in_tile = (tok < q_end) & (tok < T) & (tok >= 0) & (f >= q_start * G)
    real = in_tile & ((tok * 0 + seq) < S)  # as a vector: the interpreter wants a bool tensor
    seq_safe = tl.where(seq < S, seq, 0)
    seq_len = tl.where(seq < S, tl.load(seq_lens_ptr + seq_safe), 0)  # S >= 1: always in range
    pos = tl.load(positions_ptr + tok, mask=real, other=0).to(tl.int32)
    kv_len = tl.where(real, tl.minimum(pos + 1, seq_len), 0)  # causal, never past the sequence
    bt_row = block_tables_ptr + seq_safe.to(tl.int64) * MB
    if HAS_ERR:
        # a row is bad when it reads a key whose page is bad: find the first bad page once
        kv_max = tl.max(kv_len, 0)
        ncols = tl.where(kv_max > 0, (kv_max - 1) // BLOCK_SIZE + 1, 0)  # no overflow
        first_bad = tl.where(ncols > MB, MB, 2147483647)  # columns past the table are bad
        for c0 in range(0, tl.minimum(ncols, MB), 64):
            c = c0 + tl.arange(0, 64)
            b = tl.load(bt_row + c, mask=(c < ncols) & (c < MB), other=0)
            isbad = (c < ncols) & (c < MB) & ((b < 0) | (b >= num_blocks))
            first_bad = tl.minimum(first_bad, tl.min(tl.where(isbad, c, 2147483647), 0))
        bad = real & (kv_len > 0) & ((kv_len - 1) // BLOCK_SIZE >= first_bad)
        count_bad_rows(err_ptr, bad & (head == 0), tok)  # each token once: head 0's row

    kv_len = tl.where(num_blocks > 0, kv_len, 0)  # no block 0 to redirect to: read nothing
    kv_max = tl.max(kv_len, 0)
    # keys below every real row's kv_len need no mask: whole tiles of them run unmasked
    kv_min = tl.min(tl.where(real, kv_len, 2147483647), 0)
    unmasked = (tl.minimum(kv_min, kv_max) // BLOCK_N) * BLOCK_N
    row_off = (tok.to(tl.int64) * H + head)[:, None] * D + d[None, :]
    q = tl.load(q_ptr + row_off, mask=real[:, None], other=0.0)
    q = (q.to(tl.float32) * qk_scale).to(q_ptr.dtype.element_ty)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    # full tiles: every row sees every key, nothing to mask and every max is finite
    for start in range(0, unmasked, BLOCK_N):
        slot = _kv_slots(bt_row, start, MB, num_blocks, BLOCK_SIZE, BLOCK_N)
        kv_off = (slot * HKV + hkv)[:, None] * D + d[None, :]  # [N, D]
        k = tl.load(k_cache_ptr + kv_off)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s - m_new[:, None])
        v = tl.load(v_cache_ptr + kv_off)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        l_i = l_i * alpha + tl.sum(p, 1)
        m_i = m_new
    # the diagonal and ragged tiles: keys j < kv_len of each row
    for start in range(unmasked, kv_max, BLOCK_N):
        j = start + tl.arange(0, BLOCK_N)
        j_live = j < seq_len
        slot = _kv_slots(bt_row, start, MB, num_blocks, BLOCK_SIZE, BLOCK_N)
        kv_off = (slot * HKV + hkv)[:, None] * D + d[None, :]
        k = tl.load(k_cache_ptr + kv_off, mask=j_live[:, None], other=0.0)
        live = j[None, :] < kv_len[:, None]  # [M, N]
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION)
        s = tl.where(live, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.math.exp2(m_i - m_safe)
        p = tl.math.exp2(s - m_safe[:, None])
        v = tl.load(v_cache_ptr + kv_off, mask=j_live[:, None], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        l_i = l_i * alpha + tl.sum(p, 1)
        m_i = m_new
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    tl.store(out_ptr + row_off, out.to(out_ptr.dtype.element_ty), mask=in_tile[:, None])


def _tiles(T: int, S: int, G: int, D: int, dtype: Any) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages); the compile gate checks none spills.

    BLOCK_M counts (token, query head) rows: the G heads that share a KV head are packed
    into one tile, so K/V is read once per group. The longest query is a device value
    the launcher cannot read without a sync (a CUDA graph forbids one): the choice is by
    the host-known bucket T and sequence capacity S, through the rows an average
    sequence slot brings, T * G / S. Long chunks take 64 x 64 tiles on one warpgroup
    (4 warps, 16 whole rows each: no row statistic crosses warps), which sm_90 runs on
    wgmma; short ones keep small tiles. 128 x 64 on 8 warps is wgmma too but spills on
    sm_80 (255 registers: 40 B at D = 64, 168 B at D = 128), and one launch config
    serves both archs in the compile gate.
    """
    if rt.gpu_tiles():
        if (
            str(dtype).rpartition(".")[2] == "float32"
        ):  # exact fp32 dots run on FMA units: small tiles
            return (16, 16, 4, 2) if D <= 128 else (16, 16, 8, 2)
        rows = T * G // S
        if D > 128:
            return 16, 32, 4, 2
        if rows >= 64:
            return 64, 64, 4, 3
        return 32, 32, 4, 2
    return 64, 64, 4, 1  # the interpreter pays per program: fewer, larger tiles


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
    qa, kc, vc = Arg(q, "q"), Arg(k_cache, "k_cache"), Arg(v_cache, "v_cache")
    bt, sl = Arg(block_tables, "block_tables"), Arg(seq_lens, "seq_lens")
    qsl, pos = Arg(query_start_loc, "query_start_loc"), Arg(positions, "positions")
    if qa.ndim != 3 or kc.ndim != 3 or kc.shape != vc.shape:
        raise ValueError(f"q must be [T, H, D], caches [slots, HKV, D]: {qa.shape}, {kc.shape}")
    T, H, D = qa.shape
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
    if bt.ndim != 2 or bt.shape[0] != S or qsl.shape != (S + 1,) or pos.shape != (T,):
        raise ValueError("block_tables [S, MB], query_start_loc [S+1], positions [T] expected")
    for a, dt in ((bt, "int32"), (qsl, "int32"), (sl, "int32"), (pos, "int64")):
        if a.dtype != dt or not a.contiguous():
            raise ValueError(f"{a.name} must be contiguous {dt}, got {a.dtype}")
    if qa.dtype not in _FLOAT_DTYPES or kc.dtype != qa.dtype or vc.dtype != qa.dtype:
        raise ValueError(
            f"q, k_cache, v_cache must share one of fp32/fp16/bf16, got "
            f"{qa.dtype}, {kc.dtype}, {vc.dtype}"
        )
    for a in (qa, kc, vc):
        if not a.contiguous():
            raise ValueError(f"{a.name} must be contiguous")
    device = same_device(qa, kc, vc, bt, qsl, sl, pos)
    if out is None:
        out_k, out = rt.new_output(qa.shape, qa.dtype, qa)
    else:
        o = Arg(out, "out")
        if o.shape != qa.shape or o.dtype != qa.dtype:
            raise ValueError(f"out must be {qa.dtype} {qa.shape}, got {o.dtype} {o.shape}")
        if not o.contiguous():
            raise ValueError("out must be contiguous")
        same_device(qa, o)
        out_k = rt.kernel_tensor(o)
    err = rt.check_error_counter(error_counter, device)
    if T == 0:
        return out
    qk, kk, vk, btk, qslk, slk, posk = (rt.kernel_tensor(a) for a in (qa, kc, vc, bt, qsl, sl, pos))
    if rt.use_native(qa):
        rt.native_impl(qk).paged_attention(
            qk, kk, vk, btk, qslk, slk, posk, block_size, scale, out_k, err
        )
        return out
    bm, bn, warps, stages = _tiles(T, S, H // HKV, D, qa.dtype)
    grid = ((T * (H // HKV)) // bm + S + 1, HKV)
    with rt.launch_stream(q), rt.quiet_interpreter():
        _paged_attention_kernel[grid](
            qk,
            kk,
            vk,
            btk,
            qslk,
            slk,
            posk,
            out_k,
            err if err is not None else slk,
            T,
            S,
            bt.shape[1],
            kc.shape[0] // block_size,
            scale * 1.4426950408889634,  # log2(e): the kernel runs exp2
            H=H,
            HKV=HKV,
            D=D,
            BLOCK_SIZE=block_size,
            HAS_ERR=err is not None,
            BLOCK_M=bm,
            BLOCK_N=bn,
            BLOCK_S=rt.next_pow2(S + 1),
            PRECISION="ieee" if qa.dtype == "float32" else "tf32",
            num_warps=warps,
            num_stages=stages,
            maxnreg=255,  # an explicit cap: without one ptxas may pick ~60 registers and spill
        )
    return out
