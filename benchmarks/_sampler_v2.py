"""Frozen copy of ``kernels/top_p_sample.py`` at the second restructure (v2, commit 1c7a9f7).

For ``benchmarks/sampler_cost.py`` only (old vs new cost); not imported by the package.
The kernel below: pass 1 (max, normalisers), two exact pivot searches of 16 pivots a
pass (top-k by count, then top-p by mass; per-thread partials, one block reduction a
pass), then a Gumbel-max draw (one Philox call per 4 tokens).
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
from graphbatch.sampling import RULE_OF_FIELD

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_ROUNDS = 12  # safety bound; n/2 key pivots split the key interval n/2 + 1 ways a round
# Any pivot count finds the same exact threshold; 16 (8 of them on keys) needs at most
# 11 rounds for 2^32 keys and keeps the [pivots, BLOCK] partials in registers.
# Measured under the interpreter too:
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
def _key_value(k):
    # inverse of _order_key: the float whose order key is k
    return tl.where(k >= 0, k, k ^ 0x7FFFFFFF).to(tl.float32, bitcast=True)


@triton.jit
def _log2(x, FAST: tl.constexpr):
    # lg2.approx (one MUFU op, ~2^-22 relative error) on a GPU; the interpreter runs no PTX
    if FAST:
        return tl.inline_asm_elementwise(
            "lg2.approx.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True, pack=1
        )
    else:
        return tl.log2(x)


@triton.jit
def _search(row_ptrs, rmask, V, m, inv_t, v_floor, lo, hi, mlo, clo, chi, target, kk,
            ROWS: tl.constexpr, BLOCK: tl.constexpr, NUM_PIVOTS: tl.constexpr,
            MAX_ROUNDS: tl.constexpr, SKEW: tl.constexpr):  # fmt: skip
    """Largest key K in [lo, hi) with mass(key >= K) >= target or count(key >= K) >= kk.

    Invariant: the condition holds at lo and fails at hi. ``mlo`` = mass(key >= lo)
    (exp((x - m) / T) summed) and ``clo`` = count(key >= lo), ``chi`` = count(key >= hi)
    are carried along, exact, from the pass that moved lo or hi. A row is done when
    [lo, hi) holds one key or one token: keeping key >= lo is then exactly key >= K.
    """
    offs = tl.arange(0, BLOCK)
    HALF: tl.constexpr = NUM_PIVOTS // 2
    j = tl.arange(0, NUM_PIVOTS)
    a2 = inv_t * 1.4426950408889634  # exp((x - m) / T) = exp2((x - m) * a2)
    rounds = tl.zeros([], tl.int32)  # a tensor from the start: loop-carried types must not change
    active = (hi - lo > 1) & (clo - chi > 1)
    while (tl.max(active.to(tl.int32), 0) > 0) & (rounds < MAX_ROUNDS):
        # Half the pivots split the key interval evenly: it shrinks >= HALF + 1 times a
        # round whatever the data (11 rounds for 2^32 keys). The other half split the
        # values, where logits are dense; on the first top-p round they crowd towards
        # the max (cubic spacing), where the mass is. Pivots need not be sorted: ok is
        # monotone in the pivot, so max / min over the ok ones pick the new interval.
        jk = (j - HALF + 1).to(tl.int64)
        span = (hi - lo)[:, None]
        kpiv = lo[:, None] + (span * jk[None, :]) // (HALF + 1)
        v_lo = tl.maximum(_key_value(lo.to(tl.int32)), v_floor)
        v_hi = _key_value((hi - 1).to(tl.int32))
        u = (j + 1).to(tl.float32) / (HALF + 1)
        if SKEW:
            w = 1.0 - u
            f = tl.where(rounds == 0, 1.0 - w * w * w, u)
        else:
            f = u
        v = v_lo[:, None] * (1.0 - f[None, :]) + v_hi[:, None] * f[None, :]
        vpiv = _order_key(v + 0.0).to(tl.int64)
        piv = tl.where(j[None, :] < HALF, vpiv, kpiv)
        piv = tl.minimum(tl.maximum(piv, lo[:, None] + 1), hi[:, None] - 1)
        piv32 = piv.to(tl.int32)
        # per-thread partials across the whole row: one block reduction per pass
        # compared as floats (same order as the keys: pivots lie between real values'
        # keys, so none is a NaN; x has no -0.0); the 0/1 compare result scales the
        # mass (one FFMA) and is the count (one FADD, exact below 2^24 per lane)
        pivf = _key_value(piv32)
        mass_acc = tl.zeros([ROWS, NUM_PIVOTS, BLOCK], tl.float32)
        cnt_acc = tl.zeros([ROWS, NUM_PIVOTS, BLOCK], tl.float32)
        for start in range(0, V, BLOCK):
            idx = start + offs
            x, mask, nan_seen = _load_rows(row_ptrs, rmask, idx, V)
            # masked and NaN lanes read -inf: below every pivot (pivots > kmin); e is
            # exp((x - m) / T) as the other passes compute it, in base 2: FADD + FMUL
            e = tl.exp2((x - m[:, None]) * a2[:, None])
            ge = (x[:, None, :] >= pivf[:, :, None]).to(tl.float32)
            mass_acc += e[:, None, :] * ge
            cnt_acc += ge
        mass = tl.sum(mass_acc, 2)
        cnt = tl.sum(cnt_acc.to(tl.int32), 2)
        ok = (mass >= target[:, None]) | (cnt >= kk[:, None])
        moved = tl.max(ok.to(tl.int32), 1) > 0
        failed = tl.min(ok.to(tl.int32), 1) == 0
        # ok is monotone: the largest ok pivot has the least mass and count, the
        # smallest failing one the largest count
        mlo = tl.where(moved, tl.min(tl.where(ok, mass, float("inf")), 1), mlo)
        clo = tl.where(moved, tl.min(tl.where(ok, cnt, 2147483647), 1), clo)
        chi = tl.where(failed, tl.max(tl.where(ok, -1, cnt), 1), chi)
        lo = tl.maximum(lo, tl.max(tl.where(ok, piv, lo[:, None]), 1))
        hi = tl.minimum(hi, tl.min(tl.where(ok, hi[:, None], piv), 1))
        active = (hi - lo > 1) & (clo - chi > 1)
        rounds += 1
    return lo, mlo, clo


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
    FAST_LOG2: tl.constexpr,
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

    # pass 1: max, argmax, normalisers (at T and, for logprobs, at 1), smallest key, NaNs.
    # Each thread keeps its own running max and sums (an online softmax per lane, one
    # exp per element: exp(-|x - m_lane| / T) rescales whichever side is smaller); the
    # lanes are combined once, after the loop.
    m_l = tl.full([ROWS, BLOCK], float("-inf"), tl.float32)
    z_l = tl.zeros([ROWS, BLOCK], tl.float32)
    z1_l = tl.zeros([ROWS, BLOCK], tl.float32)
    arg_l = tl.zeros([ROWS, BLOCK], tl.int32)
    kmin_l = tl.full([ROWS, BLOCK], 2147483647, tl.int32)
    nbad_l = tl.zeros([ROWS, BLOCK], tl.int32)
    for start in range(0, V, BLOCK):
        idx = start + offs
        x, mask, isnan = _load_rows(row_ptrs, rmask, idx, V)
        nbad_l += isnan.to(tl.int32)
        finite = x > float("-inf")
        up = x > m_l
        d = tl.where(up, m_l - x, x - m_l)  # <= 0; -inf when m_l is -inf
        ex = tl.exp(d * inv_t[:, None])
        z_l = tl.where(finite, tl.where(up, z_l * ex + 1.0, z_l + ex), z_l)
        if LOGPROBS:
            ex1 = tl.exp(d)
            z1_l = tl.where(finite, tl.where(up, z1_l * ex1 + 1.0, z1_l + ex1), z1_l)
        arg_l = tl.where(up, idx[None, :], arg_l)  # strict >: each lane keeps its first max
        m_l = tl.maximum(m_l, x)
        kmin_l = tl.minimum(kmin_l, tl.where(mask, _order_key(x), 2147483647))
    m = tl.max(m_l, 1)
    lane_live = m_l > float("-inf")
    z = tl.sum(tl.where(lane_live, z_l * tl.exp((m_l - m[:, None]) * inv_t[:, None]), 0.0), 1)
    if LOGPROBS:
        z1 = tl.sum(tl.where(lane_live, z1_l * tl.exp(m_l - m[:, None]), 0.0), 1)
    else:
        z1 = z
    arg = tl.min(tl.where(m_l == m[:, None], arg_l, V), 1)
    kmin = tl.min(kmin_l, 1)
    nbad = tl.sum(nbad_l, 1)

    bad = valid & ((nbad > 0) | (m == float("inf")) | (m == float("-inf")))
    if HAS_ERR:
        count_bad_rows(err_ptr, bad, rows)
    sample = valid & ~greedy & ~bad

    # top-k: the k-th largest key (count >= k), and zk = the kept mass above it
    kk = tl.where((top_k > 0) & (top_k < V), top_k, V + 1).to(tl.int32)
    k_lo = kmin.to(tl.int64)
    k_hi = tl.where(sample & (kk <= V), _order_key(m).to(tl.int64) + 1, k_lo + 1)
    no_mass = tl.full([ROWS], float("inf"), tl.float32)
    all_count = tl.zeros([ROWS], tl.int32) + V
    no_count = tl.zeros([ROWS], tl.int32)
    no_floor = tl.full([ROWS], -3.0e38, tl.float32)
    k_lo, zk, ck = _search(row_ptrs, rmask, V, m, inv_t, no_floor, k_lo, k_hi, z, all_count,
                           no_count, no_mass, kk, ROWS, BLOCK, NUM_PIVOTS, MAX_ROUNDS,
                           False)  # fmt: skip
    # top-p inside the top-k set: mass(key >= K) >= top_p * zk (renormalised top-k).
    # Below m - 110 T every exp is 0 in fp32: no value pivot is placed there.
    p_hi = tl.where(sample & (top_p < 1.0), _order_key(m).to(tl.int64) + 1, k_lo + 1)
    p_floor = m - 110.0 / inv_t
    big_k = tl.full([ROWS], 2147483647, tl.int32)
    lo, zp, cp = _search(row_ptrs, rmask, V, m, inv_t, p_floor, k_lo, p_hi, zk, ck, no_count,
                         top_p * zk, big_k, ROWS, BLOCK, NUM_PIVOTS, MAX_ROUNDS,
                         True)  # fmt: skip
    if HAS_MIN_P:
        min_p = tl.load(min_p_ptr + rows, mask=valid, other=0.0).to(tl.float32)
        log_min_p = tl.where(min_p > 0.0, tl.log(tl.maximum(min_p, 1e-38)), float("-inf"))
    else:
        log_min_p = tl.full([ROWS], float("-inf"), tl.float32)

    # sampling pass: Gumbel-max over kept tokens. Philox is keyed on (seed, offset) per
    # row (randint4x of them is the Philox key) and counts token // 4: one Philox call
    # gives four words, word token % 4 is token's uniform. The tile is [BLOCK, 4]
    # tokens, a group of 4 in one thread. Scores in base 2 with fast log2s:
    # logit + Gumbel = logit - ln(-ln u) = ln 2 (logit log2 e - log2(-log2 u)) - ln ln 2,
    # so logit log2 e - log2(-log2 u) has the same argmax.
    seed = tl.load(seeds_ptr + rows, mask=valid, other=0)
    r0, r1, r2, r3 = tl.randint4x(seed, tl.load(offsets_ptr + rows, mask=valid, other=0))
    row_seed = ((r0.to(tl.uint64) << 32) | r1.to(tl.uint64))[:, None]
    lo_f = _key_value(lo.to(tl.int32))  # a real value's key (kmin or a pivot): not NaN
    a2 = inv_t * 1.4426950408889634
    G: tl.constexpr = BLOCK  # groups of 4 tokens a tile: 4 x BLOCK tokens, 4 a thread
    grp = tl.arange(0, G)
    sub = tl.arange(0, 4)
    best_l = tl.full([ROWS, G, 4], float("-inf"), tl.float32)
    pick_l = tl.zeros([ROWS, G, 4], tl.int32)
    for start in range(0, V, 4 * BLOCK):
        idx = start + 4 * grp[:, None] + sub[None, :]  # [G, 4]
        dmask = sample[:, None, None] & (idx[None, :, :] < V)
        # sampled rows hold no NaN; -0.0 compares equal to +0.0 as floats
        xs = tl.load(row_ptrs[:, :, None] + idx[None, :, :], mask=dmask, other=float("-inf"))
        xs = xs.to(tl.float32)
        keep = (xs >= lo_f[:, None, None]) & (xs > float("-inf"))
        if HAS_MIN_P:
            logit = (xs - m[:, None, None]) * inv_t[:, None, None]
            keep = keep & (logit >= log_min_p[:, None, None])
        ctr = (start // 4 + grp)[None, :] + tl.zeros([ROWS, G], tl.int32)
        w0, w1, w2, w3 = tl.randint4x(row_seed, ctr)
        w = tl.where(
            sub[None, None, :] < 2,
            tl.where(sub[None, None, :] == 0, w0[:, :, None], w1[:, :, None]),
            tl.where(sub[None, None, :] == 2, w2[:, :, None], w3[:, :, None]),
        )
        u = tl.random.uint_to_uniform_float(w)  # [0, 1); 0 scores -inf
        logit2 = (xs - m[:, None, None]) * a2[:, None, None]  # logit x log2 e
        score = tl.where(keep, logit2 - _log2(-_log2(u, FAST_LOG2), FAST_LOG2), float("-inf"))
        up = score > best_l  # strict: each lane keeps its first best token
        pick_l = tl.where(up, idx[None, :, :], pick_l)
        best_l = tl.maximum(best_l, score)
    best = tl.max(tl.max(best_l, 2), 1)
    pick = tl.min(tl.min(tl.where(best_l == best[:, None, None], pick_l, V), 2), 1)
    pick = tl.where(best > float("-inf"), pick, arg)
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
        # 256 = one element per thread per tile: the search's per-thread partials
        # ([NUM_PIVOTS] masses and counts) then fit in registers without spilling
        return 1, min(rt.next_pow2(V), 256)
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
    seeds, offsets : [S] int64, seeds >= 0; Philox is keyed on (seed, offset) per row.
    num_valid : Python int or a device int32 tensor of one element.
    out : optional [S] int64/int32 output (no allocation then: graph-capturable).
    error_counter : optional int32 [2] (count, first row) bumped for rows with NaN or
        no finite logit; those rows still get an in-range token (their argmax).
    min_p : optional [S] float32 in [0, 1] (0 = off): drop tokens whose probability is
        below min_p x the largest, applied after top-k and top-p.
    logprobs : optional [S] float32 output: log-softmax of the raw logits (temperature
        1, no filter) at the sampled token; NaN for padded and NaN/no-finite rows.
    check_values : range-check parameter values on the host (a device sync) against
        ``graphbatch.sampling.SAMPLING_RULES``; default: on unless the framework owning
        ``logits`` is capturing a CUDA graph.
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
        live = min(max(n, 0), S)
        check_sampling_values({k: t for k, t in ts.items() if k in RULE_OF_FIELD}, live)
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
            FAST_LOG2=not rt.interpreting(),
            num_warps=8,
            # ptxas's sm_80 heuristic otherwise caps some variants at 64 registers and
            # spills; 128 still fits two 256-thread programs per SM (the compile gate checks)
            maxnreg=128,
        )
    return out
