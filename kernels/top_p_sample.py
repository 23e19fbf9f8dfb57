"""Padded top-k / top-p / min-p sampling without sorting the vocabulary.

The rule (vLLM ``apply_top_k_top_p``, HF TopK then TopP warpers, FlashInfer
``top_k_top_p_sampling_from_logits`` with ``filter_apply_order="top_k_first"``):
scale by 1/temperature; keep the top_k highest logits (ties at the k-th value kept);
renormalise over them; keep the smallest nucleus of that distribution whose mass
reaches top_p (the crossing token kept, ties at the boundary kept); then drop tokens
whose probability is below min_p x the largest (HF MinP after TopP, SGLang likewise;
min_p compares with the max, so renormalising does not change it). Draw from what is left.

The kept set N is an upper set of the values, N = {x >= theta}, and the token is the
Gumbel-max winner over N: argmax of x log2(e) / T - log2(-log2 u), u from Philox keyed
on (seed, offset, token) (randint4x(seed, offset) is the row's Philox key, token // 4
the counter, token % 4 the word: one Philox call serves 4 tokens). The winner over any
superset of N, if it lies in N, is the winner over N; so the kernel draws first and
checks after, and finds theta only when it must. The token does not depend on the path
(tests/kernels/test_top_p_sample.py checks it against a NumPy Philox):

1. Pass 1: max, argmax, NaNs, the logprob normaliser, and the winner t over every
   token (its scores need no max: x log2(e) / T; when |max log2(e) / T| > 4096 that
   would lose the noise's precision, and the draws score x - max instead).
2. Verify pass: count and mass (sum of exp((x - max) / T)) of the tokens >= each of 8
   pivots, and the normaliser. Pivot 0 lies just above t: t is in the top-k set iff
   fewer than k tokens exceed it, and in the nucleus iff their mass is below top_p x
   the top-k mass (exactly the peers' rule: the largest K with mass(>= K) >= target is
   kept, ties with it). The other 7 narrow a bracket on the order keys around the top-k
   threshold, then around the top-p one (see _place: <= 13 passes a bracket whatever
   the data). While the top-k bracket is open the top-k mass lies between the masses at
   its ends: t is accepted or rejected once that interval decides, else waits a pass.
3. Draw pass, after a rejection (or a t that fails min_p): the winner over the tokens
   above every rejected one and the brackets' low ends, then verified in turn; after
   MAX_DRAWS of them, or once the brackets hold theta, one draw over {x >= theta} ends.

A row whose first winner lies in N (about top_p of the time) reads the logits twice.
Every pass keeps per-thread partials across its tile loop and reduces them once (see
``benchmarks/sampler_cost.py``). No host sync, no data-dependent shapes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import triton
import triton.language as tl
from graphbatch.sampling import RULE_OF_FIELD

from . import _runtime as rt  # noqa: I001  (sets TRITON_INTERPRET before triton loads)
from ._checked import count_bad_rows
from ._tensor import Arg, same_device

_FLOAT_DTYPES = ("float32", "float16", "bfloat16")
# Pivots a verify pass: pivot 0 checks the drawn token, 7 narrow a bracket (see _place:
# <= 13 passes a bracket for 2^32 keys, whatever the data).
NUM_PIVOTS = 8
# Loop bound: 13 verify passes for the top-k bracket, 13 for the top-p one, one final
# draw, one spare; never reached (the brackets close first), it only bounds the loop.
MAX_ROUNDS = 28
MAX_DRAWS = 3  # redraws after rejections; then the brackets close and one draw ends it
# |max x log2(e) / T| up to which pass 1's scores keep the noise's precision (fp32:
# 2^-12 of a unit in log2): beyond it the draws score (x - max) log2(e) / T instead
PLAIN_SCORE_LIMIT = 4096.0
_TILE_ELEMENTS = 1 << 20  # Triton's largest tensor: ROWS x BLOCK x 2 (verify epilogue) fits
# reductions as tl.reduce with Triton's own combine functions: what tl.sum / tl.max /
# tl.min compile to, but a builtin the interpreter runs in numpy without a device call
_ADD = tl.standard._sum_combine
_MAX = tl.standard._elementwise_max
_MIN = tl.standard._elementwise_min


@triton.jit
def _order_key(x):
    # int32 whose signed order equals the float order of x (fp32 bits, negatives flipped)
    b = x.to(tl.int32, bitcast=True)
    return tl.where(b >= 0, b, b ^ 0x7FFFFFFF)


@triton.jit
def _key_value(k):
    # inverse of _order_key: the float whose order key is k
    return tl.where(k >= 0, k, k ^ 0x7FFFFFFF).to(tl.float32, bitcast=True)


@triton.jit
def _next_up(x):
    # the smallest float above x (x not NaN or +inf; +-0 -> the smallest denormal)
    return _key_value(_order_key(x + 0.0) + 1)


@triton.jit
def _noise(k0, k1, start, grp, sub, ROWS: tl.constexpr, G: tl.constexpr,
           FAST_LOG2: tl.constexpr):  # fmt: skip
    """Base-2 Gumbel noise log2(-log2 u) of tokens start + 4 grp + sub, [ROWS, G, 4].

    u: Philox4x32-10 (tl.randint4x's words) under the row's key (k0, k1) [ROWS, 1]
    (randint4x(seed, offset)), counter token // 4, word token % 4: one call per group
    of 4 tokens, the group in one thread; each 32 x 32 -> 64-bit product is one wide
    multiply (both words at once). The words become u in [0, 1) as
    tl.random.uint_to_uniform_float does (0 scores -inf). On a GPU two lg2.approx (one
    MUFU op each, ~2^-22 relative error), the negation folded into the second; the
    interpreter runs no PTX. One function, no calls inside: the interpreter pays per call.
    """
    c0 = ((start // 4 + grp)[None, :] + tl.full([ROWS, G], 0, tl.int32)).to(tl.uint32)
    c1 = c0 * 0
    c2 = c1
    c3 = c1
    for _ in tl.static_range(10):
        pa = c0.to(tl.uint64) * 0xD2511F53
        pb = c2.to(tl.uint64) * 0xCD9E8D57
        c0 = (pb >> 32).to(tl.uint32) ^ c1 ^ k0
        c2 = (pa >> 32).to(tl.uint32) ^ c3 ^ k1
        c1 = pb.to(tl.uint32)
        c3 = pa.to(tl.uint32)
        k0 = k0 + 0x9E3779B9
        k1 = k1 + 0xBB67AE85
    w = tl.where(
        sub[None, None, :] < 2,
        tl.where(sub[None, None, :] == 0, c0[:, :, None], c1[:, :, None]),
        tl.where(sub[None, None, :] == 2, c2[:, :, None], c3[:, :, None]),
    )
    w = w.to(tl.int32, bitcast=True)
    u = tl.where(w < 0, -w - 1, w).to(tl.float32) * 4.6566127342e-10
    if FAST_LOG2:
        return tl.inline_asm_elementwise(
            "{ .reg .f32 t; lg2.approx.ftz.f32 t, $1; neg.f32 t, t; lg2.approx.ftz.f32 $0, t; }",
            "=r,r",
            [u],
            dtype=tl.float32,
            is_pure=True,
            pack=1,
        )
    else:
        return tl.log2(-tl.log2(u))


@triton.jit
def _scan(row_ptrs, rmask, V, a2, k0, k1, ROWS: tl.constexpr, BLOCK: tl.constexpr,
          LOGPROBS: tl.constexpr, FAST_LOG2: tl.constexpr):  # fmt: skip
    """Pass 1: (max, argmax, NaN seen, logprob normaliser, best score, its token).

    Per-thread running values across the tile loop, combined once after it. The
    normaliser at T = 1 is an online softmax per lane (one exp a token); the draw scores
    x a2 - log2(-log2 u) (a2 = log2(e) / T), the max being unknown yet. NaNs are flagged,
    never mapped: compares with them are false and maximum ignores them (maxnum).
    """
    G: tl.constexpr = BLOCK // 4
    grp = tl.arange(0, G)
    sub = tl.arange(0, 4)
    m_l = tl.full([ROWS, G, 4], float("-inf"), tl.float32)
    z1_l = tl.full([ROWS, G, 4], 0, tl.float32)
    arg_l = tl.full([ROWS, G, 4], 0, tl.int32)
    nbad_l = tl.full([ROWS, G, 4], 0, tl.int32)
    best_l = tl.full([ROWS, G, 4], float("-inf"), tl.float32)
    pick_l = tl.full([ROWS, G, 4], 0, tl.int32)
    for start in range(0, V, BLOCK):
        idx = start + 4 * grp[:, None] + sub[None, :]  # [G, 4]
        mask = rmask[:, :, None] & (idx[None, :, :] < V)
        x = tl.load(row_ptrs[:, :, None] + idx[None, :, :], mask=mask, other=float("-inf"))
        x = x.to(tl.float32)
        # a NaN counts as -inf: every compare with it is false and max ignores it
        nbad_l = tl.where(x != x, 1, nbad_l)
        up = x > m_l  # strict: each lane keeps its first max
        if LOGPROBS:
            d = tl.where(up, m_l - x, x - m_l)  # <= 0; -inf when m_l is -inf
            ex = tl.exp2(d * 1.4426950408889634)
            z1_l = tl.where(x > float("-inf"), tl.where(up, z1_l * ex + 1.0, z1_l + ex), z1_l)
        arg_l = tl.where(up, idx[None, :, :], arg_l)
        m_l = tl.maximum(m_l, x)
        score = x * a2[:, None, None] - _noise(k0, k1, start, grp, sub, ROWS, G, FAST_LOG2)
        win = score > best_l  # strict: each lane keeps its first best token
        pick_l = tl.where(win, idx[None, :, :], pick_l)
        best_l = tl.maximum(best_l, score)
    m = tl.reduce(tl.reduce(m_l, 2, _MAX), 1, _MAX)
    arg = tl.reduce(tl.reduce(tl.where(m_l == m[:, None, None], arg_l, V), 2, _MIN), 1, _MIN)
    nbad = tl.reduce(tl.reduce(nbad_l, 2, _ADD), 1, _ADD)
    if LOGPROBS:
        live = m_l > float("-inf")
        z1 = tl.reduce(
            tl.reduce(tl.where(live, z1_l * tl.exp(m_l - m[:, None, None]), 0.0), 2, _ADD), 1, _ADD
        )
    else:
        z1 = tl.full([ROWS], 0, tl.float32)
    best = tl.reduce(tl.reduce(best_l, 2, _MAX), 1, _MAX)
    pick = tl.reduce(
        tl.reduce(tl.where(best_l == best[:, None, None], pick_l, V), 2, _MIN), 1, _MIN
    )
    return m, arg, nbad, z1, best, pick


@triton.jit
def _draw(row_ptrs, rmask, V, m, a2, inv_t, shift, lo_f, log_min_p, k0, k1,
          ROWS: tl.constexpr, BLOCK: tl.constexpr, HAS_MIN_P: tl.constexpr,
          FAST_LOG2: tl.constexpr):  # fmt: skip
    """The Gumbel-max winner over {x >= lo_f} (and min_p) of the rows in rmask.

    Scores (x - shift) a2 - noise: shift 0 scores as pass 1 does, so a winner over a
    subset of pass 1's tokens is the token pass 1 ranks first among them; shift = max
    where pass 1's scores lost the noise's precision.
    """
    G: tl.constexpr = BLOCK // 4
    grp = tl.arange(0, G)
    sub = tl.arange(0, 4)
    best_l = tl.full([ROWS, G, 4], float("-inf"), tl.float32)
    pick_l = tl.full([ROWS, G, 4], 0, tl.int32)
    for start in range(0, V, BLOCK):
        idx = start + 4 * grp[:, None] + sub[None, :]  # [G, 4]
        mask = rmask[:, :, None] & (idx[None, :, :] < V)
        # drawing rows hold no NaN; -0.0 compares equal to +0.0 as floats
        xd = tl.load(row_ptrs[:, :, None] + idx[None, :, :], mask=mask, other=float("-inf"))
        xd = xd.to(tl.float32)
        keep = (xd >= lo_f[:, None, None]) & (xd > float("-inf"))
        if HAS_MIN_P:
            logit = (xd - m[:, None, None]) * inv_t[:, None, None]
            keep = keep & (logit >= log_min_p[:, None, None])
        # (x - 0) a2 - g is x a2 - g to the bit (the same FFMA): pass 1's score
        score = (xd - shift[:, None, None]) * a2[:, None, None] - _noise(
            k0, k1, start, grp, sub, ROWS, G, FAST_LOG2
        )
        score = tl.where(keep, score, float("-inf"))
        win = score > best_l
        pick_l = tl.where(win, idx[None, :, :], pick_l)
        best_l = tl.maximum(best_l, score)
    best = tl.reduce(tl.reduce(best_l, 2, _MAX), 1, _MAX)
    pick = tl.reduce(
        tl.reduce(tl.where(best_l == best[:, None, None], pick_l, V), 2, _MIN), 1, _MIN
    )
    return tl.where(best > float("-inf"), pick, -1)  # -1: no token scored above -inf


@triton.jit
def _verify(row_ptrs, rmask, V, m, a2, pivf, ROWS: tl.constexpr, BLOCK: tl.constexpr,
            W: tl.constexpr, NUM_PIVOTS: tl.constexpr):  # fmt: skip
    """(normaliser, mass [ROWS, 8], count [ROWS, 8]) of the tokens x >= pivf.

    Values are compared with the pivots as floats; the 0/1 result scales the mass (one
    FFMA) and is the count (one FADD). The tile is [ROWS, G, W] (W adjacent tokens a
    thread, one 4W-byte load) and each pivot has its own accumulators in that layout
    (written out: a [.., 8] axis gets a layout that spills): per-thread partials
    across the whole row, one block reduction a pass for the masses, one for the counts.
    Every sum adds the same terms in the same order (zeros where x < pivot), so masses
    and counts are monotone in the pivot, and the normaliser is the mass at -inf.
    Counts are fp32 sums of 0/1: exact below 2^24 a lane. No helper calls inside:
    the interpreter pays for every call.
    """
    tl.static_assert(NUM_PIVOTS == 8)
    G: tl.constexpr = BLOCK // W
    grp = tl.arange(0, G)
    sub = tl.arange(0, W)
    # the pivots as eight [ROWS, 1, 1] (split and join are free under the interpreter,
    # reductions are calls): pivf[:, 4a + 2b + c] = q[:, a, b, c]
    qa, qb = tl.split(tl.reshape(pivf, [ROWS, 2, 2, 2]))
    q00, q01 = tl.split(qa)
    q10, q11 = tl.split(qb)
    p0, p4 = tl.split(q00)
    p2, p6 = tl.split(q01)
    p1, p5 = tl.split(q10)
    p3, p7 = tl.split(q11)
    p0, p1, p2, p3 = p0[:, None, None], p1[:, None, None], p2[:, None, None], p3[:, None, None]
    p4, p5, p6, p7 = p4[:, None, None], p5[:, None, None], p6[:, None, None], p7[:, None, None]
    z = tl.full([ROWS, G, W], 0, tl.float32)
    m0 = tl.full([ROWS, G, W], 0, tl.float32)
    m1, m2, m3, m4, m5, m6, m7 = m0, m0, m0, m0, m0, m0, m0
    c0, c1, c2, c3, c4, c5, c6, c7 = m0, m0, m0, m0, m0, m0, m0, m0
    for start in range(0, V, BLOCK):
        idx = start + W * grp[:, None] + sub[None, :]  # [G, W]
        mask = rmask[:, :, None] & (idx[None, :, :] < V)
        # verified rows hold no NaN; masked lanes read -inf: below every pivot
        xv = tl.load(row_ptrs[:, :, None] + idx[None, :, :], mask=mask, other=float("-inf"))
        xv = xv.to(tl.float32)
        e = tl.exp2((xv - m[:, None, None]) * a2[:, None, None])
        z += e
        ge = (xv >= p0).to(tl.float32)
        m0, c0 = m0 + e * ge, c0 + ge
        ge = (xv >= p1).to(tl.float32)
        m1, c1 = m1 + e * ge, c1 + ge
        ge = (xv >= p2).to(tl.float32)
        m2, c2 = m2 + e * ge, c2 + ge
        ge = (xv >= p3).to(tl.float32)
        m3, c3 = m3 + e * ge, c3 + ge
        ge = (xv >= p4).to(tl.float32)
        m4, c4 = m4 + e * ge, c4 + ge
        ge = (xv >= p5).to(tl.float32)
        m5, c5 = m5 + e * ge, c5 + ge
        ge = (xv >= p6).to(tl.float32)
        m6, c6 = m6 + e * ge, c6 + ge
        ge = (xv >= p7).to(tl.float32)
        m7, c7 = m7 + e * ge, c7 + ge
    # each thread's W tokens summed in-thread (the same order for every sum), the pivots'
    # partials stacked [ROWS, G, 8] (column 4a + 2b + c, as pivf); then one block
    # reduction for the masses, one for the counts
    z = tl.reduce(z, 2, _ADD)
    mass = tl.join(
        tl.join(tl.join(tl.reduce(m0, 2, _ADD), tl.reduce(m4, 2, _ADD)),
                tl.join(tl.reduce(m2, 2, _ADD), tl.reduce(m6, 2, _ADD))),
        tl.join(tl.join(tl.reduce(m1, 2, _ADD), tl.reduce(m5, 2, _ADD)),
                tl.join(tl.reduce(m3, 2, _ADD), tl.reduce(m7, 2, _ADD))),
    )  # fmt: skip
    cnt = tl.join(
        tl.join(tl.join(tl.reduce(c0, 2, _ADD), tl.reduce(c4, 2, _ADD)),
                tl.join(tl.reduce(c2, 2, _ADD), tl.reduce(c6, 2, _ADD))),
        tl.join(tl.join(tl.reduce(c1, 2, _ADD), tl.reduce(c5, 2, _ADD)),
                tl.join(tl.reduce(c3, 2, _ADD), tl.reduce(c7, 2, _ADD))),
    )  # fmt: skip
    mass = tl.reduce(tl.reshape(mass, [ROWS, G, NUM_PIVOTS]), 1, _ADD)
    cnt = tl.reduce(tl.reshape(cnt, [ROWS, G, NUM_PIVOTS]).to(tl.int32), 1, _ADD)
    return tl.reduce(z, 1, _ADD), mass, cnt


@triton.jit
def _first(x, ROWS: tl.constexpr):
    # column 0 of [ROWS, 8] (split, not a reduction: free under the interpreter)
    a, _ = tl.split(tl.reshape(x, [ROWS, 4, 2]))
    b, _ = tl.split(tl.reshape(a, [ROWS, 2, 2]))
    c, _ = tl.split(b)
    return c


@triton.jit
def _place(lo, hi, v_lo, v_hi, rnd, NUM_PIVOTS: tl.constexpr):
    """Pivot keys strictly inside (lo, hi) in columns 1.., column 0 left for the token.

    A bracket's round 0 splits the values [v_lo, v_hi], crowded towards the max (cubic
    spacing), where the mass and the top few tokens are; its key interval is still all
    of fp32. Rounds 1-2 split the keys evenly in columns 1..3 (>= 4x narrower whatever
    the data) and the values in the rest, where logits are dense; later rounds split
    only the keys, 8 ways: the data is not dense in value (keys over many binades).
    2 + 2 bits in rounds 1-2 and 3 a round after close 2^32 keys by round 12.
    """
    nk = tl.where(rnd == 0, 0, tl.where(rnd < 3, 3, NUM_PIVOTS - 1))[:, None]
    j = tl.arange(0, NUM_PIVOTS)[None, :]
    span = (hi - lo)[:, None]
    kpiv = lo[:, None] + (span * j.to(tl.int64)) // (nk + 1).to(tl.int64)
    u = (j - nk).to(tl.float32) / (NUM_PIVOTS - nk).to(tl.float32)
    w = 1.0 - u
    f = tl.where(rnd[:, None] == 0, 1.0 - w * w * w, u)
    v = v_lo[:, None] * (1.0 - f) + v_hi[:, None] * f
    vpiv = _order_key(v + 0.0).to(tl.int64)
    piv = tl.where(j <= nk, kpiv, vpiv)
    return tl.minimum(tl.maximum(piv, lo[:, None] + 1), hi[:, None] - 1)


@triton.jit
def _narrow(piv, mass, cnt, use, kk, target, lo, hi, mlo, mhi, clo, chi):
    """One bracket round: ok(pivot) = count >= kk or mass >= target, monotone in the
    pivot; lo (ok) and hi (not ok) move to the nearest pivots, carrying mass and count
    at both ends (min / max over the pivots: outside the bracket they change nothing)."""
    ok = (cnt >= kk[:, None]) | (mass >= target[:, None])
    yes = ok & use
    no = (~ok) & use
    lo = tl.maximum(lo, tl.reduce(tl.where(yes, piv, lo[:, None]), 1, _MAX))
    hi = tl.minimum(hi, tl.reduce(tl.where(no, piv, hi[:, None]), 1, _MIN))
    mlo = tl.minimum(mlo, tl.reduce(tl.where(yes, mass, float("inf")), 1, _MIN))
    clo = tl.minimum(clo, tl.reduce(tl.where(yes, cnt, 2147483647), 1, _MIN))
    mhi = tl.maximum(mhi, tl.reduce(tl.where(no, mass, 0.0), 1, _MAX))
    chi = tl.maximum(chi, tl.reduce(tl.where(no, cnt, 0), 1, _MAX))
    return lo, hi, mlo, mhi, clo, chi


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
    VBLOCK: tl.constexpr,
    VW: tl.constexpr,
    NUM_PIVOTS: tl.constexpr,
    MAX_ROUNDS: tl.constexpr,
    MAX_DRAWS: tl.constexpr,
    PLAIN_SCORE_LIMIT: tl.constexpr,
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
    row_base = logits_ptr + rows.to(tl.int64) * stride_row
    row_ptrs = row_base[:, None]
    t = tl.load(temperature_ptr + rows, mask=valid, other=1.0).to(tl.float32)
    greedy = t <= 0.0
    inv_t = 1.0 / tl.where(greedy, 1.0, t)
    a2 = inv_t * 1.4426950408889634  # exp((x - m) / T) = exp2((x - m) * a2)
    top_p = tl.minimum(tl.load(top_p_ptr + rows, mask=valid, other=1.0).to(tl.float32), 1.0)
    top_k = tl.load(top_k_ptr + rows, mask=valid, other=0).to(tl.int64)
    seed = tl.load(seeds_ptr + rows, mask=valid, other=0)
    r0, r1, r2, r3 = tl.randint4x(seed, tl.load(offsets_ptr + rows, mask=valid, other=0))
    k0 = r1[:, None]  # randint4x(seed, offset) words 0-1: the row's Philox key
    k1 = r0[:, None]

    # pass 1: max, argmax, NaNs, normaliser at T = 1, and the draw over every token
    m, arg, nbad, z1, best, pick = _scan(row_ptrs, rmask, V, a2, k0, k1, ROWS, BLOCK,
                                         LOGPROBS, FAST_LOG2)  # fmt: skip
    bad = valid & ((nbad > 0) | (m == float("inf")) | (m == float("-inf")))
    if HAS_ERR:
        count_bad_rows(err_ptr, bad, rows)
    sample = valid & ~greedy & ~bad
    if HAS_MIN_P:
        min_p = tl.load(min_p_ptr + rows, mask=valid, other=0.0).to(tl.float32)
        log_min_p = tl.where(min_p > 0.0, tl.log(tl.maximum(min_p, 1e-38)), float("-inf"))
    else:
        log_min_p = tl.full([ROWS], float("-inf"), tl.float32)

    k_on = sample & (top_k > 0) & (top_k < V)
    kk = tl.where(k_on, top_k, V + 1).to(tl.int32)
    p_on = sample & (top_p < 1.0)
    no_count = tl.full([ROWS], 2147483647, tl.int32)
    no_mass = tl.full([ROWS], float("inf"), tl.float32)
    # pass 1's winner stands if its scores kept the noise's precision and it passes min_p
    plain = (best > float("-inf")) & (tl.abs(m * a2) <= PLAIN_SCORE_LIMIT)
    shift = tl.where(plain, 0.0, m)
    cand = tl.minimum(pick, V - 1)  # V when no score beat -inf (then not plain)
    cand_x = tl.load(row_base + cand, mask=sample, other=0.0).to(tl.float32)
    minp_ok = (cand_x - m) * inv_t >= log_min_p
    has_cand = sample & plain & minp_ok
    # draws keep x >= lo_f: above rejected tokens and the brackets' low ends
    lo_f = tl.where(sample & plain & ~minp_ok, _next_up(cand_x), float("-inf"))

    # brackets on order keys, [lo, hi): the condition holds at lo, fails at hi; mass and
    # count carried at both ends. phase 0: top-k (count >= k), 1: top-p (mass >= top_p x
    # zk), 2: theta = lo exactly.
    key_top = _order_key(m).to(tl.int64) + 1
    lo = tl.full([ROWS], 0, tl.int64) - 2139095041  # the order key of -inf
    hi = key_top
    mlo = tl.full([ROWS], -1.0, tl.float32)  # mass at lo: the normaliser, once known
    mhi = tl.full([ROWS], 0, tl.float32)
    clo = tl.full([ROWS], 0, tl.int32) + V
    chi = tl.full([ROWS], 0, tl.int32)
    zk = tl.full([ROWS], 0, tl.float32)  # the top-k mass, once known
    phase = tl.where(k_on, 0, tl.where(p_on, 1, 2))
    rnd = tl.full([ROWS], 0, tl.int32)  # the open bracket's round (see _place)
    done = ~sample | (has_cand & (phase == 2))
    need = ~done & ~has_cand
    draws = tl.full([ROWS], 0, tl.int32)
    rounds = tl.full([], 0, tl.int32)  # a tensor from the start: loop-carried types must not change
    while (tl.reduce((~done).to(tl.int32), 0, _MAX) > 0) & (rounds < MAX_ROUNDS):
        if tl.reduce(need.to(tl.int32), 0, _MAX) > 0:
            # draw pass: the winner over {x >= lo_f}; it stands if above the bracket's
            # "surely kept" end (hi of top-p; hi of top-k without top-p; theta)
            got = _draw(row_ptrs, need[:, None], V, m, a2, inv_t, shift, lo_f, log_min_p,
                        k0, k1, ROWS, BLOCK, HAS_MIN_P, FAST_LOG2)  # fmt: skip
            got = tl.where(got >= 0, got, arg)  # every u was 0 (p ~ 2^-31 a token): the max
            cand = tl.where(need, got, cand)
            x_got = tl.load(row_base + got, mask=need, other=0.0)
            cand_x = tl.where(need, x_got.to(tl.float32), cand_x)
            surely = _key_value(tl.where(phase == 2, lo, hi).to(tl.int32))
            surely = tl.where((phase == 0) & p_on, float("inf"), surely)
            done = done | (need & (cand_x >= surely))
            has_cand = has_cand | need
            draws += need.to(tl.int32)
            need = tl.full([ROWS], 0, tl.int1)
        act = ~done
        if tl.reduce(act.to(tl.int32), 0, _MAX) > 0:
            # verify pass: pivot 0 just above the drawn token, the rest in the bracket
            col = tl.arange(0, NUM_PIVOTS)[None, :]
            v_hi = _key_value((hi - 1).to(tl.int32))
            floor = m - tl.where(rnd == 0, 40.0, 110.0) / inv_t  # exp2 is 0 below m - 110 T
            v_lo = tl.maximum(_key_value(lo.to(tl.int32)), floor)
            piv = _place(lo, hi, v_lo, v_hi, rnd, NUM_PIVOTS)
            piv = tl.where(col == 0, (_order_key(cand_x + 0.0) + 1).to(tl.int64)[:, None], piv)
            pivf = _key_value(piv.to(tl.int32))
            z, mass, cnt = _verify(
                row_ptrs, act[:, None], V, m, a2, pivf, ROWS, VBLOCK, VW, NUM_PIVOTS
            )
            mlo = tl.where(act & (mlo < 0.0), z, mlo)
            zk = tl.where(k_on, zk, z)
            use = (col > 0) | has_cand[:, None]
            # the open bracket (phase 0 or 1) narrows
            kk_now = tl.where(phase == 0, kk, no_count)
            tgt = tl.where(phase == 1, top_p * zk, no_mass)
            lo2, hi2, mlo2, mhi2, clo2, chi2 = _narrow(piv, mass, cnt, use, kk_now, tgt, lo,
                                                       hi, mlo, mhi, clo, chi)  # fmt: skip
            open_ = act & (phase < 2)
            lo = tl.where(open_, lo2, lo)
            hi = tl.where(open_, hi2, hi)
            mlo = tl.where(open_, mlo2, mlo)
            mhi = tl.where(open_, mhi2, mhi)
            clo = tl.where(open_, clo2, clo)
            chi = tl.where(open_, chi2, chi)
            closed = open_ & ((hi - lo <= 1) | (clo - chi <= 1))
            # top-k closed: zk = mass(>= lo); top-p opens on [lo, max] and reads this
            # pass's pivots again against top_p x zk
            k_closed = closed & (phase == 0)
            zk = tl.where(k_closed, mlo, zk)
            p_open = k_closed & p_on
            hi = tl.where(p_open, key_top, hi)
            mhi = tl.where(p_open, 0.0, mhi)
            chi = tl.where(p_open, 0, chi)
            if tl.reduce(p_open.to(tl.int32), 0, _MAX) > 0:
                lo2, hi2, mlo2, mhi2, clo2, chi2 = _narrow(piv, mass, cnt, use, no_count,
                                                           top_p * zk, lo, hi, mlo, mhi, clo,
                                                           chi)  # fmt: skip
                lo = tl.where(p_open, lo2, lo)
                hi = tl.where(p_open, hi2, hi)
                mlo = tl.where(p_open, mlo2, mlo)
                mhi = tl.where(p_open, mhi2, mhi)
                clo = tl.where(p_open, clo2, clo)
                chi = tl.where(p_open, chi2, chi)
            p_closed = (closed & (phase == 1)) | (p_open & ((hi - lo <= 1) | (clo - chi <= 1)))
            phase = tl.where(k_closed, tl.where(p_on, 1, 2), phase)
            phase = tl.where(p_closed, 2, phase)
            rnd = tl.where(p_open, 0, rnd + 1)
            # the drawn token: in the top-k set iff fewer than k tokens exceed it; in the
            # nucleus iff their mass is below top_p x zk, zk in [mhi, mlo] while top-k is open
            c_t = _first(cnt, ROWS)
            m_t = _first(mass, ROWS)
            zk_lo = tl.where(phase == 0, mhi, zk)
            zk_hi = tl.where(phase == 0, mlo, zk)
            in_k = ~k_on | (c_t < kk)
            in_p = ~p_on | (m_t < top_p * zk_lo)
            out_p = p_on & (m_t >= top_p * zk_hi)
            judged = act & has_cand
            done = done | (judged & in_k & in_p)
            rejected = judged & (~in_k | out_p)
            lo_f = tl.where(rejected, tl.maximum(lo_f, _next_up(cand_x)), lo_f)
            has_cand = has_cand & ~rejected
            # nothing below the bracket's low end is kept
            lo_f = tl.where(act, tl.maximum(lo_f, _key_value(lo.to(tl.int32))), lo_f)
            need = ~done & ~has_cand & ((draws < MAX_DRAWS) | (phase == 2))
        rounds += 1
    token = tl.where(sample & has_cand, cand, arg)  # greedy and bad rows keep the argmax
    if LOGPROBS:
        # log-softmax of the raw logits at the drawn token: one more load, no extra pass
        x_tok = tl.load(row_base + token, mask=valid, other=0.0)
        lp = x_tok.to(tl.float32) - m - tl.log(z1)
        tl.store(logprobs_ptr + rows, tl.where(valid & ~bad, lp, float("nan")), mask=in_grid)
    token = tl.where(valid, token, -1)
    tl.store(out_ptr + rows, token.to(out_ptr.dtype.element_ty), mask=in_grid)


def _tile(S: int, V: int) -> tuple[int, int, int, int]:
    """(rows per program, token block of pass 1 and the draws, token block of a verify
    pass, adjacent tokens a thread in a verify pass)."""
    if rt.gpu_tiles():
        # 8 warps: 4 adjacent tokens a thread (one 16-byte load, one Philox call) in pass
        # 1 and the draws; 2 a thread in a verify pass, whose 2 x 8 masses and counts per
        # token stay in registers beside the search's state (4 would spill)
        return 1, 1024, 512, 2
    block = max(4, min(rt.next_pow2(V), 4096))
    rows = max(1, min(rt.next_pow2(S), _TILE_ELEMENTS // (block * NUM_PIVOTS), 1024))
    return rows, block, block, 4


def _check_param(a: Arg, S: int, dtypes: tuple) -> Arg:
    return a.require(ndim=1, shape=(S,), dtypes=dtypes)


def check_sampling_values(params: dict[str, Any], num_valid: int) -> None:
    """Host-side range check of the live rows of every sampling parameter in ``params``
    (the rules: ``graphbatch.sampling``); reads device values: a sync."""
    for name, t in params.items():
        rule = RULE_OF_FIELD[name]
        values = rt.host_values(t)[:num_valid]
        rows = np.flatnonzero(rule.out_of_range(values))
        if rows.size:
            r = int(rows[0])
            raise ValueError(
                f"{name}[{r}] = {values[r].item()} is out of range (must be {rule.requirement})"
            )


def _num_valid(num_valid: Any, S: int, device: str, fallback: Any):
    """(tensor read by the kernel, int, read-from-pointer flag)."""
    if isinstance(num_valid, bool) or not isinstance(num_valid, int):
        nv = Arg(num_valid, "num_valid")
        if nv.numel != 1 or nv.dtype != "int32" or nv.device != device:
            raise ValueError(f"num_valid tensor must be one int32 element on {device}")
        return rt.kernel_tensor(nv), 0, True
    if not 0 <= num_valid <= S:
        raise ValueError(f"num_valid = {num_valid} outside [0, {S}]")
    return fallback, num_valid, False


def _output(x: Any, name: str, S: int, dtypes: tuple, lg: Arg) -> Any:
    a = _check_param(Arg(x, name), S, dtypes)
    same_device(lg, a)
    return rt.kernel_tensor(a)


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
    la = Arg(logits, "logits")
    if la.ndim != 2:
        raise ValueError(f"logits must be 2-D [S, V], got shape {la.shape}")
    if la.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"logits dtype must be fp32/fp16/bf16, got {la.dtype}")
    if la.stride(1) != 1:
        raise ValueError("logits rows must be contiguous (stride(1) == 1)")
    S, V = la.shape
    if V == 0:
        raise ValueError("logits has an empty vocabulary")
    spec = {
        "temperature": (temperature, ("float32",)),
        "top_p": (top_p, ("float32",)),
        "top_k": (top_k, ("int32", "int64")),
        "seeds": (seeds, ("int64",)),
        "offsets": (offsets, ("int64",)),
    }
    if min_p is not None:
        spec["min_p"] = (min_p, ("float32",))
    args = {name: _check_param(Arg(x, name), S, dtypes) for name, (x, dtypes) in spec.items()}
    device = same_device(la, *args.values())
    ts = {name: rt.kernel_tensor(a) for name, a in args.items()}
    nv_t, nv_int, from_ptr = _num_valid(num_valid, S, device, ts["seeds"])

    if out is None:
        out_t, out = rt.new_output((S,), "int64", la)
    else:
        out_t = _output(out, "out", S, ("int64", "int32"), la)
    lp_t = None if logprobs is None else _output(logprobs, "logprobs", S, ("float32",), la)
    err = rt.check_error_counter(error_counter, device)

    if check_values is None:
        check_values = not rt.capturing(logits)
    if check_values:
        n = nv_int if not from_ptr else int(rt.host_values(nv_t).reshape(-1)[0])
        live = min(max(n, 0), S)
        check_sampling_values({k: t for k, t in ts.items() if k in RULE_OF_FIELD}, live)
    if S == 0:
        return out
    lg = rt.kernel_tensor(la)
    if rt.use_native(la):
        rt.native_impl(lg).top_p_sample(lg, ts, nv_t if from_ptr else nv_int, out_t, lp_t, err)
        return out
    rows, block, vblock, vw = _tile(S, V)
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
            la.stride(0),
            NUM_VALID_FROM_PTR=from_ptr,
            HAS_MIN_P="min_p" in ts,
            LOGPROBS=lp_t is not None,
            HAS_ERR=err is not None,
            ROWS=rows,
            BLOCK=block,
            VBLOCK=vblock,
            VW=vw,
            NUM_PIVOTS=NUM_PIVOTS,
            MAX_ROUNDS=MAX_ROUNDS,
            MAX_DRAWS=MAX_DRAWS,
            PLAIN_SCORE_LIMIT=PLAIN_SCORE_LIMIT,
            FAST_LOG2=not rt.interpreting(),
            num_warps=8,
            # ptxas's sm_80 heuristic otherwise caps some variants at 64 registers and
            # spills; 128 still fits two 256-thread programs per SM (the compile gate checks)
            maxnreg=128,
        )
    return out
