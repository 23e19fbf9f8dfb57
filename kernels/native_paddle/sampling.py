"""Native paddle top-k / top-p / min-p sampling: the torch native path's rule and draw.

Rule (see ``kernels/top_p_sample.py``): scale by 1/temperature (<= 0: greedy argmax);
keep logits >= the k-th largest (ties kept); renormalise; keep the smallest set of the
largest values whose mass reaches top_p (crossing value and ties kept); drop tokens below
min_p x the max probability; draw by Gumbel-max. The uniforms come from the counter-based
hash of (seed, offset, token) of ``kernels/native/sampling.py``, in exact int64
arithmetic: for the same inputs this path draws the torch native path's tokens.
"""

from __future__ import annotations

from typing import Any

import paddle

from ._errors import count_bad_rows

_M32 = 0xFFFFFFFF
_CHUNK_ELEMENTS = 1 << 22  # rows x vocab per pass: bounds the [rows, V] temporaries
_NEG_INF = float("-inf")
_PREFIX = 1024  # sorted values tried first for a top-p row (8x more while it falls short)
_SUM_BLOCK = 256  # row sums add blocks of this many, then the blocks


def _c64(v: int) -> paddle.Tensor:
    # Paddle's bitwise ops take tensors only, not Python ints
    return paddle.full([], v, dtype="int64")


def _mix32(h: paddle.Tensor) -> paddle.Tensor:
    """The torch native's 32-bit xorshift-multiply hash: values in [0, 2^32) in int64,
    multipliers < 2^31, so every product is exact (< 2^63)."""
    m = _c64(_M32)
    h = paddle.bitwise_xor(h, h >> 16)
    h = paddle.bitwise_and(h * 0x21F0AAAD, m)
    h = paddle.bitwise_xor(h, h >> 15)
    h = paddle.bitwise_and(h * 0x735A2D97, m)
    return paddle.bitwise_xor(h, h >> 15)


def _row_keys(seeds: paddle.Tensor, offsets: paddle.Tensor) -> tuple[paddle.Tensor, paddle.Tensor]:
    """Two 32-bit keys per row from every bit of (seed, offset)."""
    m = _c64(_M32)
    key = paddle.full_like(seeds, 0x9E3779B9)
    for word in (offsets >> 32, offsets, seeds >> 32, seeds):  # >>: arithmetic, as torch
        key = _mix32(paddle.bitwise_xor(key, paddle.bitwise_and(word, m)))
    return key, _mix32(paddle.bitwise_xor(key, _c64(0x7F4A7C15)))


def _gumbel(key: paddle.Tensor, key2: paddle.Tensor, token: paddle.Tensor) -> paddle.Tensor:
    """Gumbel(0, 1) noise, a function of (row keys, token index) only."""
    h = _mix32(paddle.bitwise_and(_mix32(paddle.bitwise_xor(token, key)) + key2, _c64(_M32)))
    # the top 24 bits, centred: u is never 0 or 1, so the noise is always finite
    u = ((h >> 8).astype("float32") + 0.5) * 2.0**-24
    return -paddle.log(-paddle.log(u))


def _take(x: paddle.Tensor, col: paddle.Tensor) -> paddle.Tensor:
    """x[r, col[r]] as [n, 1]."""
    return paddle.take_along_axis(x, col[:, None], axis=1)


def _row_sum(e: paddle.Tensor) -> paddle.Tensor:
    """[n] fp32 row sums of ``e`` [n, V] >= 0, in blocks of _SUM_BLOCK then across them.

    Paddle's CPU sum adds fp32 sequentially (1e-5 relative over a 49k vocabulary, enough
    to move a top-p cut); two levels keep the error near torch's, with no fp64 pass.
    """
    n, V = e.shape
    if V <= _SUM_BLOCK:
        return e.sum(1)
    pad = -V % _SUM_BLOCK
    if pad:
        e = paddle.concat([e, paddle.zeros([n, pad], dtype=e.dtype)], axis=1)
    return e.reshape([n, -1, _SUM_BLOCK]).sum(2).sum(1)


def _mask(keep: paddle.Tensor) -> paddle.Tensor:
    """0 where ``keep``, -inf elsewhere: added, it masks. (paddle.where over [n, V] costs
    several times an elementwise op on a CPU; log of the 0/1 mask does not.)"""
    return paddle.log(keep.astype("float32"))


def _threshold(
    x: paddle.Tensor, logit: paddle.Tensor, top_p: paddle.Tensor, top_k: paddle.Tensor
) -> tuple[paddle.Tensor, paddle.Tensor, paddle.Tensor] | None:
    """(thr [n], vals, order): the kept set is x >= thr (top-k, then the top-p nucleus
    within it; -inf for a row with neither), from the sorted prefix (vals, order) of each
    row; None when no row has either."""
    V = x.shape[1]
    k_on = (top_k > 0) & (top_k < V)
    p_on = top_p < 1.0
    if not bool((k_on | p_on).any()):
        return None
    # A sorted prefix first: the widest top-k set and one value more (below the k-th
    # value it shows that no tie lies past the prefix), and _PREFIX values for a top-p
    # row (a nucleus is usually far narrower than the vocabulary; sorting it all is slow)
    need = paddle.where(k_on, top_k + 1, paddle.where(p_on, _c64(_PREFIX), _c64(1)))
    width = min(int(need.max()), V)
    while (found := _cut(x, logit, top_p, top_k, k_on, p_on, width)) is None:
        width = min(8 * width, V)  # the full width always gives an answer
    return found


def _cut(
    x: paddle.Tensor,
    logit: paddle.Tensor,
    top_p: paddle.Tensor,
    top_k: paddle.Tensor,
    k_on: paddle.Tensor,
    p_on: paddle.Tensor,
    width: int,
) -> tuple[paddle.Tensor, paddle.Tensor, paddle.Tensor] | None:
    """(thr, vals, order) from the ``width`` largest values of each row; None when a
    top-p row without top-k has a nucleus wider than that (sort more)."""
    V = x.shape[1]
    vals, order = paddle.topk(x, width, axis=1)
    kk = paddle.where(k_on, top_k, _c64(1))
    kth = paddle.where(k_on, _take(vals, kk - 1)[:, 0], paddle.full_like(top_p, _NEG_INF))
    if not bool(p_on.any()):
        return kth, vals, order  # ties at the k-th value kept
    in_k = (vals >= kth[:, None]).astype("float32")  # the top-k set (or the prefix), sorted
    sorted_p = paddle.exp(paddle.take_along_axis(logit, order, axis=1)) * in_k
    # fp64 accumulation, as torch's CPU cumsum (Paddle's fp32 one adds sequentially)
    cum64 = paddle.cumsum(sorted_p.astype("float64"), axis=1)
    cum = cum64.astype("float32")
    # the whole top-k mass: the prefix's when it holds the top-k set (it reaches below the
    # k-th value, or is the whole row); else (top-p only, ties past the prefix) the row's
    mass = cum64[:, -1].astype("float32")
    inside = vals[:, -1] < kth
    if width < V and not bool(inside.all()):
        full = _row_sum(paddle.exp(logit + _mask(x >= kth[:, None])))
        mass = paddle.where(inside, mass, full)
    target = top_p * mass
    if width < V and bool((p_on & ~k_on & (cum[:, -1] < target)).any()):
        return None
    # the first sorted position whose cumulative mass reaches top_p of it; a top-k row
    # that falls short (ties past the prefix, rounding) cuts at the k-th value: all kept.
    # That value is >= the k-th, so one threshold applies both cuts (ties kept)
    below = (cum < target[:, None]).astype("int64").sum(1)
    cut = paddle.minimum(below, in_k.sum(1).astype("int64") - 1)
    return paddle.where(p_on, _take(vals, cut)[:, 0], kth), vals, order


def _draw(x: paddle.Tensor, m: paddle.Tensor, p: dict[str, paddle.Tensor]) -> paddle.Tensor:
    """[n] int64 tokens for rows that sample (finite max, temperature > 0).

    A -inf logit needs no mask: its score stays -inf, below the kept finite max's.
    """
    V = x.shape[1]
    logit = (x - m[:, None]) * (1.0 / p["temperature"])[:, None]  # <= 0; -inf stays -inf
    found = _threshold(x, logit, paddle.clip(p["top_p"], max=1.0), p["top_k"])
    log_min_p = None
    if "min_p" in p:  # p / p_max >= min_p: logit >= log min_p; the max always stays
        min_p = p["min_p"]
        log_min_p = paddle.where(
            min_p > 0, paddle.log(paddle.clip(min_p, min=1e-38)), paddle.full_like(min_p, _NEG_INF)
        )
    if found is not None:
        thr, vals, order = found
        if vals.shape[1] == V or bool((vals[:, -1] < thr).all()):
            # every kept token lies in the sorted prefix: draw there, not over the row
            return _draw_prefix(logit, thr, vals, order, log_min_p, p["seeds"], p["offsets"])
    keep = None if found is None else x >= found[0][:, None]
    if log_min_p is not None:
        above = logit >= log_min_p[:, None]
        keep = above if keep is None else keep & above
    return paddle.argmax(_noisy(logit, keep, p["seeds"], p["offsets"]), axis=1)


def _draw_prefix(
    logit: paddle.Tensor,
    thr: paddle.Tensor,
    vals: paddle.Tensor,
    order: paddle.Tensor,
    log_min_p: paddle.Tensor | None,
    seeds: paddle.Tensor,
    offsets: paddle.Tensor,
) -> paddle.Tensor:
    """The Gumbel-max token over kept tokens that all lie in the prefix ``order``: the
    same scores as over the row (noise by token index), the same winner (the smallest
    token index among equal best scores, as argmax over the row gives)."""
    sorted_logit = paddle.take_along_axis(logit, order, axis=1)
    keep = vals >= thr[:, None]
    if log_min_p is not None:
        keep &= sorted_logit >= log_min_p[:, None]
    key, key2 = _row_keys(seeds, offsets)
    score = sorted_logit + _gumbel(key[:, None], key2[:, None], order) + _mask(keep)
    best = paddle.amax(score, axis=1, keepdim=True)
    never = paddle.full_like(order, logit.shape[1])
    return paddle.amin(paddle.where(score == best, order, never), axis=1)


def _noisy(
    logit: paddle.Tensor, keep: paddle.Tensor | None, seeds: paddle.Tensor, offsets: paddle.Tensor
) -> paddle.Tensor:
    """logit + Gumbel noise where kept (None: everywhere), -inf elsewhere. The max is
    always kept, so the argmax is a kept token; ties go to the first index, as in the
    kernel."""
    key, key2 = _row_keys(seeds, offsets)
    if keep is None or 2 * int(keep.sum()) > keep.numel():  # mostly kept: noise everywhere
        tok = paddle.arange(logit.shape[1], dtype="int64")[None, :]
        noisy = logit + _gumbel(key[:, None], key2[:, None], tok)
        return noisy if keep is None else noisy + _mask(keep)
    # sparse: a top-k row hashes its k tokens, not the vocabulary (same noise per token)
    rows, cols = paddle.nonzero(keep, as_tuple=True)
    rows, cols = rows.flatten(), cols.flatten()
    picked = paddle.gather_nd(logit, paddle.stack([rows, cols], axis=1))
    noisy = picked + _gumbel(paddle.gather(key, rows), paddle.gather(key2, rows), cols)
    return paddle.full_like(logit, _NEG_INF).index_put_((rows, cols), noisy)


def _rows(lg: paddle.Tensor, p: dict[str, paddle.Tensor], want_lp: bool):
    """(tokens [n] int64, logprobs [n] fp32 or None, bad [n]) for valid rows ``lg``."""
    x = lg if lg.dtype == paddle.float32 else lg.astype("float32")
    nan = paddle.isnan(x).any(1)
    if bool(nan.any()):  # NaN counts as -inf, and flags its row
        x = paddle.nan_to_num(x, nan=_NEG_INF, posinf=float("inf"), neginf=_NEG_INF)
    m = paddle.amax(x, axis=1)
    bad = nan | paddle.isinf(m)
    sample = paddle.nonzero(~bad & (p["temperature"] > 0)).flatten()
    n_sample = sample.shape[0]
    if n_sample == x.shape[0]:  # every row samples: no argmax, no row gather
        tokens = _draw(x, m, p)
    else:
        tokens = paddle.argmax(x, axis=1)  # the first index of the max: greedy and bad rows
        if n_sample:
            sub = {k: paddle.gather(t, sample) for k, t in p.items()}
            drawn = _draw(paddle.gather(x, sample), paddle.gather(m, sample), sub)
            tokens = paddle.scatter(tokens, sample, drawn)
    lp = None
    if want_lp:  # log-softmax of the raw logits at the chosen token (NaN for bad rows)
        z = _row_sum(paddle.exp(x - m[:, None]))  # NaN where m is +-inf
        lp = _take(x, tokens)[:, 0] - (paddle.log(z) + m)
        lp = paddle.where(bad, paddle.full_like(lp, float("nan")), lp)
    return tokens, lp, bad


def _valid_count(num_valid: Any, S: int) -> int:
    n = int(num_valid.flatten()[0]) if isinstance(num_valid, paddle.Tensor) else int(num_valid)
    return min(max(n, 0), S)


def top_p_sample(
    logits: paddle.Tensor,
    params: dict[str, paddle.Tensor],
    num_valid: int | paddle.Tensor,
    out: paddle.Tensor,
    logprobs: paddle.Tensor | None,
    err: paddle.Tensor | None,
) -> None:
    """Fill ``out`` [S] int32/int64 (and ``logprobs`` [S] fp32) in place; rows >= num_valid
    get -1 (and NaN); NaN / no-finite rows get their argmax (NaN logprob) and are counted.

    ``logits`` [S, V] fp32/fp16/bf16; ``params``: temperature, top_p (fp32), top_k
    (int32/int64), seeds, offsets (int64) and optionally min_p (fp32), all [S].
    """
    S, V = logits.shape
    n = _valid_count(num_valid, S)
    if n < S:
        out[n:] = -1
        if logprobs is not None:
            logprobs[n:] = float("nan")
    chunk = max(1, _CHUNK_ELEMENTS // max(V, 1))
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        p = {k: t[a:b] for k, t in params.items()}
        p["top_k"] = p["top_k"].astype("int64")
        tokens, lp, bad = _rows(logits[a:b], p, logprobs is not None)
        count_bad_rows(err, bad, a)
        out[a:b] = tokens.astype(out.dtype)
        if logprobs is not None:
            logprobs[a:b] = lp
