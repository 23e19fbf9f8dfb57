"""Native causal prefill attention over a paged KV cache, with the Triton kernel's rules.

Per query row r of sequence s (rows qsl[s]..qsl[s+1]): keys j < kv_len = min(positions[r]
+ 1, seq_lens[s]), read through block_tables[s, j // block_size]. A block id outside
[0, num_blocks) or a column past the table is redirected to block 0 and the row is
counted; rows past qsl[S] and rows with no key get zeros. Sequences loop on the host (the
native path never runs inside a CUDA graph): each gathers its K/V blocks once and runs
``scaled_dot_product_attention`` with a boolean mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._seq_rows import row_bounds
from ._errors import count_bad_rows

# query rows x keys per SDPA call: bounds the [rows, keys] mask and its float copy
_MASK_ELEMENTS = 1 << 24


def _first_bad_key(bt: torch.Tensor, num_blocks: int, block_size: int) -> torch.Tensor:
    """[S] int64: the first key whose block is bad (an id out of range, or past the table).

    A row is bad exactly when it reads that key, i.e. when kv_len > this.
    """
    S, MB = bt.shape
    first_col = torch.full((S,), MB, dtype=torch.int64)
    if MB:
        blk_bad = (bt < 0) | (bt >= num_blocks)
        first_col = torch.where(blk_bad.any(1), torch.argmax(blk_bad.to(torch.uint8), 1), MB)
    return first_col * block_size


def _kv_lens(
    bounds: list[tuple[int, int]], seq_lens: torch.Tensor, positions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(kv_len [T] int64, sequence of each row [T], -1 for padding rows)."""
    T = positions.shape[0]
    seq = torch.full((T,), -1, dtype=torch.int64)
    for s, (a, b) in enumerate(bounds):
        seq[a:b] = s
    real = seq >= 0
    seq_len = seq_lens.to(torch.int64)[seq.clamp(min=0)]
    pos = positions.to(torch.int32).to(torch.int64)  # the kernel's int32 position
    kv_len = torch.where(real, torch.minimum(pos + 1, seq_len), 0).clamp(min=0)
    return kv_len, seq


def _heads_first(x: torch.Tensor) -> torch.Tensor:
    """[M, H, D] -> [1, H, M, D] fp32: SDPA's layout."""
    return x.permute(1, 0, 2).unsqueeze(0).to(torch.float32)


def _gather_kv(
    cache: torch.Tensor, blocks: torch.Tensor, block_size: int, length: int
) -> torch.Tensor:
    """[1, HKV, length, D] fp32: the sequence's first ``length`` keys (or values)."""
    _, HKV, D = cache.shape
    paged = cache.view(-1, block_size, HKV, D).index_select(0, blocks)
    return _heads_first(paged.view(-1, HKV, D)[:length])


def _attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_len: torch.Tensor,
    scale: float,
    out: torch.Tensor,
) -> None:
    """out [M, H, D] = attention of q [M, H, D] over keys j < kv_len[row]."""
    M, H, _ = q.shape
    L = k.shape[2]
    gqa = H != k.shape[1]
    if M == L and torch.equal(kv_len, torch.arange(1, L + 1)):
        # a fresh prefill: plain causal attention, so SDPA skips the masked half
        o = F.scaled_dot_product_attention(
            _heads_first(q), k, v, is_causal=True, scale=scale, enable_gqa=gqa
        )
        out.copy_(o[0].permute(1, 0, 2))
        return
    chunk = max(1, _MASK_ELEMENTS // L)  # row chunks bound the mask
    j = torch.arange(L)
    for c in range(0, M, chunk):
        lens = kv_len[c : c + chunk]
        o = F.scaled_dot_product_attention(
            _heads_first(q[c : c + chunk]), k, v, attn_mask=j[None, :] < lens[:, None],
            scale=scale, enable_gqa=gqa,
        )  # fmt: skip
        # a row with no key gets zeros (some SDPA backends give NaN for an all-False mask)
        out[c : c + chunk] = torch.where((lens > 0)[:, None, None], o[0].permute(1, 0, 2), 0.0)


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    qsl: torch.Tensor,
    seq_lens: torch.Tensor,
    positions: torch.Tensor,
    block_size: int,
    scale: float,
    out: torch.Tensor,
    err: torch.Tensor | None,
) -> None:
    """Fill ``out`` [T, H, D] in place; count bad rows in ``err`` as the kernel does."""
    T, MB = q.shape[0], block_tables.shape[1]
    num_blocks = k_cache.shape[0] // block_size
    bounds = row_bounds(qsl.tolist(), T)
    kv_len, seq = _kv_lens(bounds, seq_lens, positions)
    first_bad = _first_bad_key(block_tables, num_blocks, block_size)
    count_bad_rows(err, (seq >= 0) & (kv_len > first_bad[seq.clamp(min=0)]))
    out.zero_()  # padding rows and rows with no key
    if num_blocks == 0:
        return  # no block 0 to redirect to: every row with a key is counted above
    # keys past the table are bad rows already (counted): they need not contribute
    cap = MB * block_size
    lengths = [min(int(kv_len[a:b].max()), cap) if b > a else 0 for a, b in bounds]
    for s, (a, b) in enumerate(bounds):
        L = lengths[s]
        if L <= 0:
            continue
        blocks = block_tables[s, : -(-L // block_size)].to(torch.int64)
        blocks = torch.where((blocks >= 0) & (blocks < num_blocks), blocks, 0)
        k = _gather_kv(k_cache, blocks, block_size, L)
        v = _gather_kv(v_cache, blocks, block_size, L)
        _attend(q[a:b], k, v, kv_len[a:b], scale, out[a:b])
