"""Native paddle causal prefill attention over a paged KV cache, with the kernel's rules.

Per query row r of sequence s (rows qsl[s]..qsl[s+1]): keys j < kv_len = min(positions[r]
+ 1, seq_lens[s]), read through block_tables[s, j // block_size]. A block id outside
[0, num_blocks) or a column past the table is redirected to block 0 and the row is
counted; rows past qsl[S] and rows with no key get zeros. Sequences loop on the host:
each gathers its K/V blocks once (as integer words: Paddle's CPU gather has no float16)
and runs a masked softmax(q k^T) v in fp32, the G query heads that share a KV head
stacked into one matmul (no repeated K/V).
"""

from __future__ import annotations

import paddle
import paddle.nn.functional as F

from .._seq_rows import row_bounds
from ._errors import count_bad_rows
from ._rows import take_rows

# heads x query rows x keys per matmul: bounds the fp32 score temporaries (64 MiB)
_SCORE_ELEMENTS = 1 << 24
_ROW_CHUNK = 128  # query rows per matmul at most (smaller chunks cost more than they skip)


def _first_bad_key(bt: paddle.Tensor, num_blocks: int, block_size: int) -> paddle.Tensor:
    """[S] int64: the first key whose block is bad (an id out of range, or past the table).

    A row is bad exactly when it reads that key, i.e. when kv_len > this.
    """
    S, MB = bt.shape
    first_col = paddle.full([S], MB, dtype="int64")
    if MB:
        blk_bad = ((bt < 0) | (bt >= num_blocks)).astype("int32")
        first_col = paddle.where(blk_bad.any(1), paddle.argmax(blk_bad, 1), first_col)
    return first_col * block_size


def _kv_lens(
    bounds: list[tuple[int, int]], seq_lens: paddle.Tensor, positions: paddle.Tensor
) -> tuple[paddle.Tensor, paddle.Tensor]:
    """(kv_len [T] int64, sequence of each row [T], -1 for padding rows)."""
    T = positions.shape[0]
    seq = paddle.full([T], -1, dtype="int64")
    for s, (a, b) in enumerate(bounds):
        if b > a:
            seq[a:b] = s
    real = seq >= 0
    seq_len = paddle.gather(seq_lens.astype("int64"), seq.clip(min=0))
    pos = positions.astype("int32").astype("int64")  # the kernel's int32 position
    kv_len = paddle.where(real, paddle.minimum(pos + 1, seq_len), paddle.zeros_like(pos))
    return kv_len.clip(min=0), seq


def _gather_kv(
    cache: paddle.Tensor, blocks: paddle.Tensor, block_size: int, length: int
) -> paddle.Tensor:
    """[length, HKV, D] fp32: the sequence's first ``length`` keys (or values)."""
    _, HKV, D = cache.shape
    pages = cache.reshape([-1, block_size * HKV * D])  # one row per block
    paged = take_rows(pages, blocks).view(cache.dtype).reshape([-1, HKV, D])[:length]
    return paged.astype("float32")


def _attend(
    q: paddle.Tensor,
    k: paddle.Tensor,
    v: paddle.Tensor,
    kv_len: paddle.Tensor,
    scale: float,
) -> paddle.Tensor:
    """[M, H, D] fp32 attention of q [M, H, D] over k, v [L, HKV, D], keys j < kv_len[row].

    The G = H / HKV heads of a group stack their rows: scores [HKV, G * M, L].
    """
    M, H, D = q.shape
    L, HKV, _ = k.shape
    G = H // HKV
    qg = q.astype("float32").reshape([M, HKV, G, D]).transpose([1, 2, 0, 3])
    kh, vh = k.transpose([1, 0, 2]), v.transpose([1, 0, 2])  # [HKV, L, D]
    s = paddle.matmul(qg.reshape([HKV, G * M, D]), kh, transpose_y=True) * scale
    live = paddle.arange(L, dtype="int64")[None, :] < kv_len[:, None]  # [M, L]
    bias = paddle.log(live.astype("float32"))  # 0 for a key the row sees, -inf past it
    p = F.softmax(s.reshape([HKV, G, M, L]) + bias, axis=-1)
    o = paddle.matmul(p.reshape([HKV, G * M, L]), vh)  # [HKV, G * M, D]
    o = o.reshape([HKV, G, M, D]).transpose([2, 0, 1, 3]).reshape([M, H, D])
    if bool((kv_len > 0).all()):
        return o
    # a row with no key has an all -inf score row (NaN softmax): it gets zeros
    return paddle.where((kv_len > 0)[:, None, None], o, paddle.zeros([1], "float32"))


def paged_attention(
    q: paddle.Tensor,
    k_cache: paddle.Tensor,
    v_cache: paddle.Tensor,
    block_tables: paddle.Tensor,
    qsl: paddle.Tensor,
    seq_lens: paddle.Tensor,
    positions: paddle.Tensor,
    block_size: int,
    scale: float,
    out: paddle.Tensor,
    err: paddle.Tensor | None,
) -> None:
    """Fill ``out`` [T, H, D] in place; count bad rows in ``err`` as the kernel does.

    q [T, H, D] and the caches [slots, HKV, D] share fp32/fp16/bf16 (computed in fp32);
    block_tables [S, MB] int32, qsl [S + 1] int32, seq_lens [S] int32, positions [T].
    """
    T, H, _ = q.shape
    MB = block_tables.shape[1]
    if T == 0:
        return
    num_blocks = k_cache.shape[0] // block_size
    bounds = row_bounds(qsl.tolist(), T)
    kv_len, seq = _kv_lens(bounds, seq_lens, positions)
    first_bad = _first_bad_key(block_tables, num_blocks, block_size)
    count_bad_rows(err, (seq >= 0) & (kv_len > paddle.gather(first_bad, seq.clip(min=0))))
    out.zero_()  # padding rows and rows with no key
    if num_blocks == 0:
        return  # no block 0 to redirect to: every row with a key is counted above
    # keys past the table are bad rows already (counted): they need not contribute
    cap = MB * block_size
    for s, (a, b) in enumerate(bounds):
        L = min(int(kv_len[a:b].max()), cap) if b > a else 0
        if L <= 0:
            continue
        blocks = block_tables[s, : -(-L // block_size)].astype("int64")
        blocks = paddle.where((blocks >= 0) & (blocks < num_blocks), blocks, 0)
        k = _gather_kv(k_cache, blocks, block_size, L)
        v = _gather_kv(v_cache, blocks, block_size, L)
        # query row chunks: each reads only the keys its rows see (a causal prefill
        # skips most of the masked half), and they bound the score temporaries
        chunk = max(1, min(_ROW_CHUNK, _SCORE_ELEMENTS // (H * L)))
        for c in range(a, b, chunk):
            e = min(b, c + chunk)
            lens = kv_len[c:e]
            n = min(int(lens.max()), L)
            if n > 0:
                out[c:e] = _attend(q[c:e], k[:n], v[:n], lens, scale).astype(out.dtype)
