"""Padded top-k/top-p sampling without sorting the vocabulary.

One program per row. Pass 1 finds the max (and argmax), the normaliser and the
smallest key with an online softmax; the threshold search narrows an interval over
monotone int32 keys of the logits with NUM_PIVOTS pivots per pass (exact: it ends
on the key of the boundary token, so ties at the threshold are kept); the last pass
draws by the Gumbel-max trick over the kept tokens, with Philox keyed on
(seed, offset, token). No host sync, no data-dependent shapes.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from . import _runtime as rt  # noqa: I001  (sets TRITON_INTERPRET before triton loads)
from ._checked import count_bad_rows

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_ROUNDS = 12  # safety bound; n pivots split the key interval n + 1 ways per round


def _num_pivots(V: int) -> int:
    # Any pivot count finds the same exact threshold. The interpreter pays per op, so
    # it prefers few wide rounds on small rows (256 pivots: 4 rounds for 2^32 keys);
    # the GPU keeps the [pivots, BLOCK] tile small (16 pivots: 8 rounds).
    if not rt.interpreting():
        return 16
    return 256 if V <= 256 else 64 if V <= 4096 else 16


@triton.jit
def _order_key(x):
    # int32 whose signed order equals the float order of x (fp32 bits, negatives flipped)
    b = x.to(tl.int32, bitcast=True)
    return tl.where(b >= 0, b, b ^ 0x7FFFFFFF)


@triton.jit
def _load_rows(row_ptrs, rmask, idx, V):
    # row_ptrs [R, 1], rmask [R, 1], idx [BLOCK] -> x [R, BLOCK] fp32 with NaN -> -inf
    mask = rmask & (idx[None, :] < V)
    x = tl.load(row_ptrs + idx[None, :], mask=mask, other=float("-inf")).to(tl.float32)
    isnan = x != x
    # + 0.0 folds -0.0 into +0.0 so equal floats get equal keys
    return tl.where(isnan, float("-inf"), x) + 0.0, mask, isnan & mask


@triton.jit
def _top_p_sample_kernel(
    logits_ptr,  # [S, V] fp32/fp16/bf16
    temperature_ptr,  # [S] fp32
    top_p_ptr,  # [S] fp32
    top_k_ptr,  # [S] int32/int64
    seeds_ptr,  # [S] int64
    offsets_ptr,  # [S] int64
    num_valid_ptr,  # [1] int32, read when NUM_VALID_FROM_PTR
    num_valid_int,
    out_ptr,  # [S] int32/int64
    err_ptr,  # [2] int32: (bad rows, first bad row)
    S,
    V,
    stride_row,
    NUM_VALID_FROM_PTR: tl.constexpr,
    HAS_ERR: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK: tl.constexpr,
    NUM_PIVOTS: tl.constexpr,
    MAX_ROUNDS: tl.constexpr,
):
    # ROWS rows per program: 1 on a GPU; many under the interpreter, which pays per op.
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    if NUM_VALID_FROM_PTR:
        num_valid = tl.load(num_valid_ptr)
    else:
        num_valid = num_valid_int
    in_grid = rows < S
    valid = in_grid & (rows < num_valid)
    rmask = valid[:, None]
    row_ptrs = logits_ptr + (rows.to(tl.int64) * stride_row)[:, None]
    t = tl.load(temperature_ptr + rows, mask=valid, other=1.0).to(tl.float32)
    greedy = t <= 0.0
    inv_t = 1.0 / tl.where(greedy, 1.0, t)
    top_p = tl.minimum(tl.load(top_p_ptr + rows, mask=valid, other=1.0).to(tl.float32), 1.0)
    top_k = tl.load(top_k_ptr + rows, mask=valid, other=0).to(tl.int32)
    offs = tl.arange(0, BLOCK)

    # pass 1: max, argmax, online normaliser, smallest key, NaN count
    m = tl.full([ROWS], float("-inf"), tl.float32)
    z = tl.zeros([ROWS], tl.float32)
    arg = tl.zeros([ROWS], tl.int32)
    kmin = tl.full([ROWS], 2147483647, tl.int32)
    nbad = tl.zeros([ROWS], tl.int32)
    for start in range(0, V, BLOCK):
        idx = start + offs
        x, mask, isnan = _load_rows(row_ptrs, rmask, idx, V)
        nbad += tl.sum(isnan.to(tl.int32), 1)
        bm = tl.max(x, 1)
        bi = tl.min(tl.where(x == bm[:, None], idx[None, :], V), 1)
        arg = tl.where(bm > m, bi, arg)
        m_new = tl.maximum(m, bm)
        scale = tl.where(m == float("-inf"), 0.0, tl.exp((m - m_new) * inv_t))
        e = tl.where(x == float("-inf"), 0.0, tl.exp((x - m_new[:, None]) * inv_t[:, None]))
        z = z * scale + tl.sum(e, 1)
        m = m_new
        kmin = tl.minimum(kmin, tl.min(tl.where(mask, _order_key(x), 2147483647), 1))

    bad = valid & ((nbad > 0) | (m == float("inf")) | (m == float("-inf")))
    if HAS_ERR:
        count_bad_rows(err_ptr, bad, rows)
    sample = valid & ~greedy & ~bad

    # threshold search: cond(K) = mass(key >= K) >= top_p * z  OR  count >= top_k;
    # invariant cond(lo) and not cond(hi); the kept set is key >= lo.
    use_p = top_p < 1.0
    kk = tl.where((top_k > 0) & (top_k < V), top_k, V + 1)
    lo = kmin.to(tl.int64)
    search = sample & (use_p | (kk <= V))
    hi = tl.where(search, _order_key(m).to(tl.int64) + 1, lo + 1)
    target = tl.where(use_p, top_p * z, float("inf"))
    rounds = tl.zeros([], tl.int32)  # a tensor from the start: loop-carried types must not change
    while (tl.max(hi - lo, 0) > 1) & (rounds < MAX_ROUNDS):
        j = tl.arange(0, NUM_PIVOTS) + 1
        piv = lo[:, None] + ((hi - lo)[:, None] * j[None, :]) // (NUM_PIVOTS + 1)
        mass = tl.zeros([ROWS, NUM_PIVOTS], tl.float32)
        cnt = tl.zeros([ROWS, NUM_PIVOTS], tl.int32)
        for start in range(0, V, BLOCK):
            idx = start + offs
            x, mask, _ = _load_rows(row_ptrs, rmask, idx, V)
            key = _order_key(x).to(tl.int64)
            e = tl.where(mask & (x > float("-inf")), tl.exp((x - m[:, None]) * inv_t[:, None]), 0.0)
            ge = (key[:, None, :] >= piv[:, :, None]) & mask[:, None, :]
            mass += tl.sum(tl.where(ge, e[:, None, :], 0.0), 2)
            cnt += tl.sum(ge.to(tl.int32), 2)
        ok = (mass >= target[:, None]) | (cnt >= kk[:, None])
        lo = tl.maximum(lo, tl.max(tl.where(ok, piv, lo[:, None]), 1))
        hi = tl.minimum(hi, tl.min(tl.where(ok, hi[:, None], piv), 1))
        rounds += 1

    # sampling pass: Gumbel-max over kept tokens, Philox keyed on (seed, offset, token)
    seed = tl.load(seeds_ptr + rows, mask=valid, other=0)
    r0, r1, _, _ = tl.randint4x(seed, tl.load(offsets_ptr + rows, mask=valid, other=0))
    row_seed = ((r0.to(tl.uint64) << 32) | r1.to(tl.uint64))[:, None]
    best = tl.full([ROWS], float("-inf"), tl.float32)
    pick = arg
    for start in range(0, V, BLOCK):
        idx = start + offs
        x, mask, _ = _load_rows(row_ptrs, sample[:, None], idx, V)
        keep = mask & (_order_key(x).to(tl.int64) >= lo[:, None]) & (x > float("-inf"))
        u = tl.rand(row_seed, idx[None, :] + tl.zeros([ROWS, BLOCK], tl.int32))
        g = -tl.log(-tl.log(u))
        score = tl.where(keep, (x - m[:, None]) * inv_t[:, None] + g, float("-inf"))
        bs = tl.max(score, 1)
        bi = tl.min(tl.where(score == bs[:, None], idx[None, :], V), 1)
        pick = tl.where(bs > best, bi, pick)
        best = tl.maximum(best, bs)
    token = tl.where(sample, pick, arg)  # greedy and bad rows keep the argmax
    token = tl.where(valid, token, -1)
    tl.store(out_ptr + rows, token.to(out_ptr.dtype.element_ty), mask=in_grid)


def _tile(S: int, V: int) -> tuple[int, int]:
    """(rows per program, vocab block)."""
    if not rt.interpreting():
        return 1, min(rt.next_pow2(V), 1024)
    block = min(rt.next_pow2(V), 4096)
    rows = max(1, min(rt.next_pow2(S), (1 << 18) // (block * _num_pivots(V)) or 1, 64))
    return rows, block


def _check_param(name: str, t: torch.Tensor, S: int, dtypes: tuple) -> None:
    if t.dim() != 1 or t.shape[0] != S:
        raise ValueError(f"{name} must have shape [{S}], got {tuple(t.shape)}")
    if t.dtype not in dtypes:
        raise ValueError(f"{name} must be one of {[str(d) for d in dtypes]}, got {t.dtype}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous")


def _check_values(temperature, top_p, top_k, num_valid: int) -> None:
    n = num_valid
    for name, t, bad in (
        ("temperature", temperature, lambda v: ~torch.isfinite(v) | (v < 0)),
        ("top_p", top_p, lambda v: ~torch.isfinite(v) | (v <= 0) | (v > 1)),
        ("top_k", top_k, lambda v: v < 0),
    ):
        rows = torch.nonzero(bad(t[:n].float() if name != "top_k" else t[:n])).flatten()
        if rows.numel():
            r = int(rows[0])
            raise ValueError(f"{name}[{r}] = {t[r].item()} is out of range")


def top_p_sample(
    logits: Any,
    temperature: Any,
    top_p: Any,
    top_k: Any,
    seeds: Any,
    offsets: Any,
    num_valid: Any,
    out: Any = None,
    error_counter: Any = None,
    *,
    check_values: bool | None = None,
) -> Any:
    """Sample one token per row of ``logits`` [S, V]; rows >= num_valid get -1.

    Parameters
    ----------
    temperature, top_p, top_k : [S] per-row parameters (0 temperature = greedy,
        0 top_k = off). The kept set is the top_k highest logits intersected with the
        smallest nucleus whose mass reaches top_p (ties at either threshold kept).
    seeds, offsets : [S] int64; Philox is keyed on (seed, offset) per row.
    num_valid : Python int or a device int32 tensor of one element.
    out : optional [S] int64/int32 output (no allocation then: graph-capturable).
    error_counter : optional int32 [2] (count, first row) bumped for rows with NaN or
        no finite logit; those rows still get an in-range token (their argmax).
    check_values : read parameter values on the host to range-check them (a sync);
        default: on unless the current CUDA stream is capturing a graph.
    Returns ``out`` (same framework as ``logits``).
    """
    lg = rt.to_torch(logits, "logits")
    if lg.dim() != 2:
        raise ValueError(f"logits must be 2-D [S, V], got shape {tuple(lg.shape)}")
    if lg.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"logits dtype must be fp32/fp16/bf16, got {lg.dtype}")
    if lg.stride(1) != 1:
        raise ValueError("logits rows must be contiguous (stride(1) == 1)")
    S, V = lg.shape
    if V == 0:
        raise ValueError("logits has an empty vocabulary")
    ts = {
        n: rt.to_torch(x, n)
        for n, x in (
            ("temperature", temperature),
            ("top_p", top_p),
            ("top_k", top_k),
            ("seeds", seeds),
            ("offsets", offsets),
        )
    }
    _check_param("temperature", ts["temperature"], S, (torch.float32,))
    _check_param("top_p", ts["top_p"], S, (torch.float32,))
    _check_param("top_k", ts["top_k"], S, (torch.int32, torch.int64))
    _check_param("seeds", ts["seeds"], S, (torch.int64,))
    _check_param("offsets", ts["offsets"], S, (torch.int64,))
    device = rt.same_device({"logits": lg, **ts})

    if isinstance(num_valid, bool) or not isinstance(num_valid, int):
        nv_t = rt.to_torch(num_valid, "num_valid")
        if nv_t.numel() != 1 or nv_t.dtype != torch.int32 or nv_t.device != device:
            raise ValueError(f"num_valid tensor must be one int32 element on {device}")
        nv_int, from_ptr = 0, True
    else:
        if not 0 <= num_valid <= S:
            raise ValueError(f"num_valid = {num_valid} outside [0, {S}]")
        nv_t, nv_int, from_ptr = ts["seeds"], num_valid, False

    if out is None:
        out_t, out = rt.new_output((S,), torch.int64, device, logits)
    else:
        out_t = rt.to_torch(out, "out")
        _check_param("out", out_t, S, (torch.int64, torch.int32))
        rt.same_device({"logits": lg, "out": out_t})
    err = rt.check_error_counter(error_counter, device)

    if check_values is None:
        check_values = not rt.capturing(device)
    if check_values:
        n = nv_int if not from_ptr else int(nv_t.item())
        _check_values(ts["temperature"], ts["top_p"], ts["top_k"], min(max(n, 0), S))
    if S == 0:
        return out
    rows, block = _tile(S, V)
    with rt.launch_stream(logits), rt.quiet_interpreter():
        _top_p_sample_kernel[(triton.cdiv(S, rows),)](
            lg,
            ts["temperature"],
            ts["top_p"],
            ts["top_k"],
            ts["seeds"],
            ts["offsets"],
            nv_t,
            nv_int,
            out_t,
            err if err is not None else out_t,
            S,
            V,
            lg.stride(0),
            NUM_VALID_FROM_PTR=from_ptr,
            HAS_ERR=err is not None,
            ROWS=rows,
            BLOCK=block,
            NUM_PIVOTS=_num_pivots(V),
            MAX_ROUNDS=MAX_ROUNDS,
            num_warps=8,
        )
    return out
