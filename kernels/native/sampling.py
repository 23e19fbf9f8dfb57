"""Native top-k / top-p / min-p sampling with the Triton sampler's rule and error handling.

Rule (see ``kernels/top_p_sample.py``): scale by 1/temperature (<= 0: greedy argmax);
keep logits >= the k-th largest (ties kept); renormalise; keep the smallest set of the
largest values whose mass reaches top_p (crossing value and ties kept); drop tokens below
min_p x the max probability; draw by Gumbel-max. The per-row sort is fine on a CPU. The
uniforms come from a counter-based hash of (seed, offset, token): same inputs, same draw.
They are not Triton's Philox stream, so the two paths draw different (equally
distributed) tokens from the same kept set.
"""

from __future__ import annotations

from typing import Any

import torch

from ._errors import count_bad_rows

_M32 = 0xFFFFFFFF
_CHUNK_ELEMENTS = 1 << 22  # rows x vocab per pass: bounds the [rows, V] temporaries
_NEG_INF = float("-inf")
_PREFIX = 1024  # sorted values tried first for a top-p row (8x more while it falls short)


def _mix32(h: torch.Tensor) -> torch.Tensor:
    """A 32-bit xorshift-multiply hash: a bijection (odd multipliers) that mixes all bits.

    ``h`` holds values in [0, 2^32) in int64; both multipliers are < 2^31, so no product
    reaches 2^63: exact int64 arithmetic, no overflow.
    """
    h = h ^ (h >> 16)
    h = (h * 0x21F0AAAD) & _M32
    h = h ^ (h >> 15)
    h = (h * 0x735A2D97) & _M32
    return h ^ (h >> 15)


def _row_keys(seeds: torch.Tensor, offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two 32-bit keys per row from every bit of (seed, offset)."""
    key = torch.full_like(seeds, 0x9E3779B9)
    for word in (offsets >> 32, offsets, seeds >> 32, seeds):
        key = _mix32(key ^ (word & _M32))
    return key, _mix32(key ^ 0x7F4A7C15)


def _gumbel(key: torch.Tensor, key2: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
    """Gumbel(0, 1) noise, a function of (row keys, token index) only."""
    h = _mix32((_mix32(token ^ key) + key2) & _M32)
    # the top 24 bits, centred: u is never 0 or 1, so the noise is always finite
    u = ((h >> 8).to(torch.float32) + 0.5) * 2.0**-24
    return -torch.log(-torch.log(u))


def _top_k_top_p(x: torch.Tensor, logit: torch.Tensor, top_p: torch.Tensor, top_k: torch.Tensor):
    """[n, V] bool: inside the top-k set and, within it, the top-p nucleus."""
    V = x.shape[1]
    k_on = (top_k > 0) & (top_k < V)
    p_on = top_p < 1.0
    if not bool(k_on.any() | p_on.any()):
        return torch.ones_like(x, dtype=torch.bool)
    # A sorted prefix first: the widest top-k set, and _PREFIX values for a top-p row
    # (a nucleus is usually far narrower than the vocabulary, and sorting it all is slow)
    need = torch.where(k_on, top_k, torch.where(p_on, _PREFIX, 1))
    width = min(int(need.max()), V)
    while (keep := _cut(x, logit, top_p, top_k, k_on, p_on, width)) is None:
        width = min(8 * width, V)  # the full width always gives an answer
    return keep


def _cut(
    x: torch.Tensor,
    logit: torch.Tensor,
    top_p: torch.Tensor,
    top_k: torch.Tensor,
    k_on: torch.Tensor,
    p_on: torch.Tensor,
    width: int,
) -> torch.Tensor | None:
    """The kept mask from the ``width`` largest values of each row; None when a top-p
    row without top-k has a nucleus wider than that (sort more)."""
    vals, order = torch.topk(x, width, dim=1)
    kk = torch.where(k_on, top_k, 1)
    kth = torch.where(k_on[:, None], vals.gather(1, (kk - 1)[:, None]), _NEG_INF)
    keep = x >= kth  # ties at the k-th value kept
    if not bool(p_on.any()):
        return keep
    in_k = vals >= kth  # the top-k set (or the prefix) in sorted order
    cum = torch.cumsum(torch.where(in_k, torch.exp(logit.gather(1, order)), 0.0), 1)
    # the whole top-k mass: ties at the k-th value may lie past the prefix
    target = top_p * torch.where(keep, torch.exp(logit), 0.0).sum(1)
    if width < x.shape[1] and bool((p_on & ~k_on & (cum[:, -1] < target)).any()):
        return None
    # the first sorted position whose cumulative mass reaches top_p of it; a top-k row
    # that falls short (ties past the prefix, rounding) cuts at the k-th value: all kept
    cut = torch.minimum((cum < target[:, None]).sum(1), in_k.sum(1) - 1)
    return keep & (~p_on[:, None] | (x >= vals.gather(1, cut[:, None])))  # ties kept


def _draw(x: torch.Tensor, m: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    """[n] int64 tokens for rows that sample (finite max, temperature > 0)."""
    logit = (x - m[:, None]) * (1.0 / p["temperature"])[:, None]  # <= 0; -inf stays -inf
    keep = (x > _NEG_INF) & _top_k_top_p(x, logit, p["top_p"].clamp(max=1.0), p["top_k"])
    if "min_p" in p:
        min_p = p["min_p"]
        log_min_p = torch.where(min_p > 0, torch.log(min_p.clamp(min=1e-38)), _NEG_INF)
        keep &= logit >= log_min_p[:, None]  # p / p_max >= min_p; the max always stays
    return torch.argmax(_noisy(logit, keep, p["seeds"], p["offsets"]), 1)


def _noisy(
    logit: torch.Tensor, keep: torch.Tensor, seeds: torch.Tensor, offsets: torch.Tensor
) -> torch.Tensor:
    """logit + Gumbel noise where kept, -inf elsewhere. The max is always kept, so the
    argmax is a kept token; ties go to the first index, as in the kernel."""
    key, key2 = _row_keys(seeds, offsets)
    if 2 * int(keep.sum()) > keep.numel():  # mostly kept: noise everywhere, then mask
        tok = torch.arange(logit.shape[1])[None, :]
        return torch.where(keep, logit + _gumbel(key[:, None], key2[:, None], tok), _NEG_INF)
    # sparse: a top-k row hashes its k tokens, not the vocabulary (same noise per token)
    rows, cols = torch.nonzero(keep, as_tuple=True)
    noisy = logit[rows, cols] + _gumbel(key[rows], key2[rows], cols)
    return torch.full_like(logit, _NEG_INF).index_put_((rows, cols), noisy)


def _rows(lg: torch.Tensor, p: dict[str, torch.Tensor], want_lp: bool):
    """(tokens [n] int64, logprobs [n] fp32 or None, bad [n]) for valid rows ``lg``."""
    raw = lg.to(torch.float32)
    nan = torch.isnan(raw)
    x = raw.masked_fill(nan, _NEG_INF)  # NaN counts as -inf, and flags its row
    m = x.amax(1)
    tokens = torch.argmax(x, 1)  # the first index of the max: greedy and bad rows
    bad = nan.any(1) | torch.isinf(m)
    sample = torch.nonzero(~bad & (p["temperature"] > 0)).flatten()
    if sample.numel():
        sub = {k: t.index_select(0, sample) for k, t in p.items()}
        tokens[sample] = _draw(x.index_select(0, sample), m.index_select(0, sample), sub)
    lp = None
    if want_lp:  # log-softmax of the raw logits at the chosen token
        lp = x.gather(1, tokens[:, None])[:, 0] - torch.logsumexp(x, 1)
        lp = lp.masked_fill(bad, float("nan"))
    return tokens, lp, bad


def _valid_count(num_valid: Any, S: int) -> int:
    n = int(num_valid.reshape(-1)[0]) if isinstance(num_valid, torch.Tensor) else int(num_valid)
    return min(max(n, 0), S)


def top_p_sample(
    logits: torch.Tensor,
    params: dict[str, torch.Tensor],
    num_valid: int | torch.Tensor,
    out: torch.Tensor,
    logprobs: torch.Tensor | None,
    err: torch.Tensor | None,
) -> None:
    """Fill ``out`` [S] (and ``logprobs``) in place; rows >= num_valid get -1 (and NaN).

    ``params``: temperature, top_p, top_k, seeds, offsets and optionally min_p, all [S].
    """
    S, V = logits.shape
    n = _valid_count(num_valid, S)
    out[n:] = -1
    if logprobs is not None:
        logprobs[n:] = float("nan")
    chunk = max(1, _CHUNK_ELEMENTS // V)
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        p = {k: t[a:b] for k, t in params.items()}
        p["top_k"] = p["top_k"].to(torch.int64)
        tokens, lp, bad = _rows(logits[a:b], p, logprobs is not None)
        count_bad_rows(err, bad, a)
        out[a:b] = tokens
        if logprobs is not None:
            logprobs[a:b] = lp
