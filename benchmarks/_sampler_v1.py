"""Frozen copy of ``kernels/top_p_sample.py`` before the per-thread-partials restructure (v1).

For ``benchmarks/sampler_cost.py`` only (old vs new cost); not imported by the package.
The kernel below is the pivot-search sampler: 16 pivots per pass, one block reduction
per tile.
"""

from __future__ import annotations

from typing import Any

import _legacy_runtime as rt  # noqa: I001  (torch-only helpers, as when frozen)
import torch
import triton
import triton.language as tl
from graphbatch.kernels import native
from graphbatch.kernels._checked import count_bad_rows
from graphbatch.kernels.top_p_sample import check_sampling_values

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_ROUNDS = 12  # safety bound; n pivots split the key interval n + 1 ways per round
# Any pivot count finds the same exact threshold; 16 needs at most 8 rounds for 2^32
# keys and keeps the [pivots, BLOCK] tile small. Measured under the interpreter too:
# 16 pivots x many rows beat 64-256 pivots by 6-9x (it pays per op and per element).
NUM_PIVOTS = 16
_TILE_ELEMENTS = 1 << 20  # Triton's largest tensor: [ROWS, NUM_PIVOTS, BLOCK] fits


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
def _search(row_ptrs, rmask, V, m, inv_t, lo, hi, mlo, target, kk,
            ROWS: tl.constexpr, BLOCK: tl.constexpr, NUM_PIVOTS: tl.constexpr,
            MAX_ROUNDS: tl.constexpr):  # fmt: skip
    """Largest key K in [lo, hi) with mass(key >= K) >= target or count(key >= K) >= kk.

    Invariant: the condition holds at lo and fails at hi. ``mlo`` = mass(key >= lo)
    (exp((x - m) / T) summed) is carried along, exact, from the pass that moved lo.
    """
    offs = tl.arange(0, BLOCK)
    rounds = tl.zeros([], tl.int32)  # a tensor from the start: loop-carried types must not change
    while (tl.max(hi - lo, 0) > 1) & (rounds < MAX_ROUNDS):
        j = tl.arange(0, NUM_PIVOTS) + 1
        piv = lo[:, None] + ((hi - lo)[:, None] * j[None, :]) // (NUM_PIVOTS + 1)
        mass = tl.zeros([ROWS, NUM_PIVOTS], tl.float32)
        cnt = tl.zeros([ROWS, NUM_PIVOTS], tl.int32)
        for start in range(0, V, BLOCK):
            idx = start + offs
            x, mask, nan_seen = _load_rows(row_ptrs, rmask, idx, V)
            key = _order_key(x).to(tl.int64)
            e = tl.where(mask & (x > float("-inf")), tl.exp((x - m[:, None]) * inv_t[:, None]), 0.0)
            ge = (key[:, None, :] >= piv[:, :, None]) & mask[:, None, :]
            mass += tl.sum(tl.where(ge, e[:, None, :], 0.0), 2)
            cnt += tl.sum(tl.where(ge, 1, 0), 2)
        ok = (mass >= target[:, None]) | (cnt >= kk[:, None])
        moved = tl.max(ok.to(tl.int32), 1) > 0
        # pivots ascend and ok is monotone: the largest ok pivot has the smallest mass
        mlo = tl.where(moved, tl.min(tl.where(ok, mass, float("inf")), 1), mlo)
        lo = tl.maximum(lo, tl.max(tl.where(ok, piv, lo[:, None]), 1))
        hi = tl.minimum(hi, tl.min(tl.where(ok, hi[:, None], piv), 1))
        rounds += 1
    return lo, mlo


@triton.jit
def _top_p_sample_kernel(
    logits_ptr,  # [S, V] fp32/fp16/bf16
    temperature_ptr,  # [S] fp32
    top_p_ptr,  # [S] fp32
    top_k_ptr,  # [S] int32/int64
    min_p_ptr,  # [S] fp32, read when HAS_MIN_P
    seeds_ptr,  # [S] int64
    offsets_ptr,  # [S] int64
    num_valid_ptr,  # [1] int32, read when NUM_VALID_FROM_PTR
    num_valid_int,
    out_ptr,  # [S] int32/int64
    logprobs_ptr,  # [S] fp32, written when LOGPROBS
    err_ptr,  # [2] int32: (bad rows, first bad row)
    S,
    V,
    stride_row,
    NUM_VALID_FROM_PTR: tl.constexpr,
    HAS_MIN_P: tl.constexpr,
    LOGPROBS: tl.constexpr,
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
    top_k = tl.load(top_k_ptr + rows, mask=valid, other=0).to(tl.int64)
    offs = tl.arange(0, BLOCK)

    # pass 1: max, argmax, normalisers (at T and, for logprobs, at 1), smallest key, NaNs
    m = tl.full([ROWS], float("-inf"), tl.float32)
    z = tl.zeros([ROWS], tl.float32)
    z1 = tl.zeros([ROWS], tl.float32)
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
        finite = x > float("-inf")
        scale = tl.where(m == float("-inf"), 0.0, tl.exp((m - m_new) * inv_t))
        e = tl.where(finite, tl.exp((x - m_new[:, None]) * inv_t[:, None]), 0.0)
        z = z * scale + tl.sum(e, 1)
        if LOGPROBS:
            scale1 = tl.where(m == float("-inf"), 0.0, tl.exp(m - m_new))
            z1 = z1 * scale1 + tl.sum(tl.where(finite, tl.exp(x - m_new[:, None]), 0.0), 1)
        m = m_new
        kmin = tl.minimum(kmin, tl.min(tl.where(mask, _order_key(x), 2147483647), 1))

    bad = valid & ((nbad > 0) | (m == float("inf")) | (m == float("-inf")))
    if HAS_ERR:
        count_bad_rows(err_ptr, bad, rows)
    sample = valid & ~greedy & ~bad

    # top-k: the k-th largest key (count >= k), and zk = the kept mass above it
    kk = tl.where((top_k > 0) & (top_k < V), top_k, V + 1).to(tl.int32)
    k_lo = kmin.to(tl.int64)
    k_hi = tl.where(sample & (kk <= V), _order_key(m).to(tl.int64) + 1, k_lo + 1)
    no_mass = tl.full([ROWS], float("inf"), tl.float32)
    k_lo, zk = _search(row_ptrs, rmask, V, m, inv_t, k_lo, k_hi, z, no_mass, kk,
                       ROWS, BLOCK, NUM_PIVOTS, MAX_ROUNDS)  # fmt: skip
    # top-p inside the top-k set: mass(key >= K) >= top_p * zk (renormalised top-k)
    p_hi = tl.where(sample & (top_p < 1.0), _order_key(m).to(tl.int64) + 1, k_lo + 1)
    no_count = tl.full([ROWS], 2147483647, tl.int32)
    lo, zp = _search(row_ptrs, rmask, V, m, inv_t, k_lo, p_hi, zk, top_p * zk, no_count,
                     ROWS, BLOCK, NUM_PIVOTS, MAX_ROUNDS)  # fmt: skip
    if HAS_MIN_P:
        min_p = tl.load(min_p_ptr + rows, mask=valid, other=0.0).to(tl.float32)
        log_min_p = tl.where(min_p > 0.0, tl.log(tl.maximum(min_p, 1e-38)), float("-inf"))
    else:
        log_min_p = tl.full([ROWS], float("-inf"), tl.float32)

    # sampling pass: Gumbel-max over kept tokens, Philox keyed on (seed, offset, token)
    seed = tl.load(seeds_ptr + rows, mask=valid, other=0)
    r0, r1, r2, r3 = tl.randint4x(seed, tl.load(offsets_ptr + rows, mask=valid, other=0))
    row_seed = ((r0.to(tl.uint64) << 32) | r1.to(tl.uint64))[:, None]
    best = tl.full([ROWS], float("-inf"), tl.float32)
    pick = arg
    for start in range(0, V, BLOCK):
        idx = start + offs
        xs, smask, snan = _load_rows(row_ptrs, sample[:, None], idx, V)
        logit = (xs - m[:, None]) * inv_t[:, None]
        keep = smask & (_order_key(xs).to(tl.int64) >= lo[:, None]) & (xs > float("-inf"))
        keep = keep & (logit >= log_min_p[:, None])
        u = tl.rand(row_seed, idx[None, :] + tl.zeros([ROWS, BLOCK], tl.int32))
        g = -tl.log(-tl.log(u))
        score = tl.where(keep, logit + g, float("-inf"))
        bs = tl.max(score, 1)
        bi = tl.min(tl.where(score == bs[:, None], idx[None, :], V), 1)
        pick = tl.where(bs > best, bi, pick)
        best = tl.maximum(best, bs)
    token = tl.where(sample, pick, arg)  # greedy and bad rows keep the argmax
    if LOGPROBS:
        # log-softmax of the raw logits at the drawn token: one more load, no extra pass
        x_tok = tl.load(logits_ptr + rows.to(tl.int64) * stride_row + token, mask=valid, other=0.0)
        lp = x_tok.to(tl.float32) - m - tl.log(z1)
        tl.store(logprobs_ptr + rows, tl.where(valid & ~bad, lp, float("nan")), mask=in_grid)
    token = tl.where(valid, token, -1)
    tl.store(out_ptr + rows, token.to(out_ptr.dtype.element_ty), mask=in_grid)


def _tile(S: int, V: int) -> tuple[int, int]:
    """(rows per program, vocab block)."""
    if rt.gpu_tiles():
        return 1, min(rt.next_pow2(V), 512)
    block = min(rt.next_pow2(V), 4096)
    rows = max(1, min(rt.next_pow2(S), _TILE_ELEMENTS // (block * NUM_PIVOTS), 1024))
    return rows, block


def _check_param(name: str, t: torch.Tensor, S: int, dtypes: tuple) -> None:
    if t.dim() != 1 or t.shape[0] != S:
        raise ValueError(f"{name} must have shape [{S}], got {tuple(t.shape)}")
    if t.dtype not in dtypes:
        raise ValueError(f"{name} must be one of {[str(d) for d in dtypes]}, got {t.dtype}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous")


def _num_valid(num_valid: Any, S: int, device: torch.device, fallback: torch.Tensor):
    """(tensor read by the kernel, int, read-from-pointer flag)."""
    if isinstance(num_valid, bool) or not isinstance(num_valid, int):
        nv_t = rt.to_torch(num_valid, "num_valid")
        if nv_t.numel() != 1 or nv_t.dtype != torch.int32 or nv_t.device != device:
            raise ValueError(f"num_valid tensor must be one int32 element on {device}")
        return nv_t, 0, True
    if not 0 <= num_valid <= S:
        raise ValueError(f"num_valid = {num_valid} outside [0, {S}]")
    return fallback, num_valid, False


def _output(x: Any, name: str, S: int, dtypes: tuple, lg: torch.Tensor) -> torch.Tensor:
    t = rt.to_torch(x, name)
    _check_param(name, t, S, dtypes)
    rt.same_device({"logits": lg, name: t})
    return t


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
    min_p: Any = None,
    logprobs: Any = None,
    check_values: bool | None = None,
) -> Any:
    """Sample one token per row of ``logits`` [S, V]; rows >= num_valid get -1.

    Parameters
    ----------
    temperature, top_p, top_k : [S] per-row parameters (temperature 0 = greedy, top_k 0
        or >= V = off, top_p 1 = off). Rule: top-k, renormalise, then the smallest
        nucleus reaching top_p (see the module docstring); ties at both thresholds kept.
    seeds, offsets : [S] int64; Philox is keyed on (seed, offset) per row.
    num_valid : Python int or a device int32 tensor of one element.
    out : optional [S] int64/int32 output (no allocation then: graph-capturable).
    error_counter : optional int32 [2] (count, first row) bumped for rows with NaN or
        no finite logit; those rows still get an in-range token (their argmax).
    min_p : optional [S] float32 in [0, 1] (0 = off): drop tokens whose probability is
        below min_p x the largest, applied after top-k and top-p.
    logprobs : optional [S] float32 output: log-softmax of the raw logits (temperature
        1, no filter) at the sampled token; NaN for padded and NaN/no-finite rows.
    check_values : range-check parameter values on the host (a device sync); default:
        on unless the framework owning ``logits`` is capturing a CUDA graph.
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
    spec = {
        "temperature": (temperature, (torch.float32,)),
        "top_p": (top_p, (torch.float32,)),
        "top_k": (top_k, (torch.int32, torch.int64)),
        "seeds": (seeds, (torch.int64,)),
        "offsets": (offsets, (torch.int64,)),
    }
    if min_p is not None:
        spec["min_p"] = (min_p, (torch.float32,))
    ts = {}
    for name, (x, dtypes) in spec.items():
        ts[name] = rt.to_torch(x, name)
        _check_param(name, ts[name], S, dtypes)
    device = rt.same_device({"logits": lg, **ts})
    nv_t, nv_int, from_ptr = _num_valid(num_valid, S, device, ts["seeds"])

    if out is None:
        out_t, out = rt.new_output((S,), torch.int64, device, logits)
    else:
        out_t = _output(out, "out", S, (torch.int64, torch.int32), lg)
    lp_t = None if logprobs is None else _output(logprobs, "logprobs", S, (torch.float32,), lg)
    err = rt.check_error_counter(error_counter, device)

    if check_values is None:
        check_values = not rt.capturing(logits)
    if check_values:
        n = nv_int if not from_ptr else int(nv_t.item())
        names = ("temperature", "top_p", "top_k", "min_p")
        check_sampling_values({k: ts[k] for k in names if k in ts}, min(max(n, 0), S))
    if S == 0:
        return out
    if rt.use_native(lg):
        native.top_p_sample(lg, ts, nv_t if from_ptr else nv_int, out_t, lp_t, err)
        return out
    rows, block = _tile(S, V)
    with rt.launch_stream(logits), rt.quiet_interpreter():
        _top_p_sample_kernel[(triton.cdiv(S, rows),)](
            lg,
            ts["temperature"],
            ts["top_p"],
            ts["top_k"],
            ts.get("min_p", ts["temperature"]),
            ts["seeds"],
            ts["offsets"],
            nv_t,
            nv_int,
            out_t,
            lp_t if lp_t is not None else ts["temperature"],
            err if err is not None else out_t,
            S,
            V,
            lg.stride(0),
            NUM_VALID_FROM_PTR=from_ptr,
            HAS_MIN_P="min_p" in ts,
            LOGPROBS=lp_t is not None,
            HAS_ERR=err is not None,
            ROWS=rows,
            BLOCK=block,
            NUM_PIVOTS=NUM_PIVOTS,
            MAX_ROUNDS=MAX_ROUNDS,
            num_warps=8,
            # ptxas's sm_80 heuristic otherwise caps some variants at 64 registers and
            # spills; 128 still fits two 256-thread programs per SM (the compile gate checks)
            maxnreg=128,
        )
    return out
