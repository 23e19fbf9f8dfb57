"""paged_attention against a NumPy reference built from a real descriptor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from graphbatch.kernels import new_error_counter
from graphbatch.kernels.paged_attention import paged_attention
from graphbatch.scheduler import PrefillScheduler, Request, SchedulerConfig

ATOL = 2e-4


def ref_attention(q, kc, vc, d, scale):
    T, H, D = q.shape
    out = np.zeros_like(q)
    group = H // kc.shape[1]
    for s in range(d.num_seqs):
        for t in range(d.query_start_loc[s], d.query_start_loc[s + 1]):
            pos = d.positions[t]
            keys = np.arange(min(pos + 1, d.seq_lens[s]))
            slots = d.block_tables[s, keys // d.block_size] * d.block_size + keys % d.block_size
            for h in range(H):
                k, v = kc[slots, h // group], vc[slots, h // group]
                w = (k @ q[t, h]) * scale
                w = np.exp(w - w.max())
                out[t, h] = (w / w.sum()) @ v
    return out


def setup(H=2, HKV=2, D=16, prompts=(5, 19, 1), chunk_first=True):
    cfg = SchedulerConfig(
        max_num_seqs=4,
        max_num_batched_tokens=32,
        block_size=4,
        num_kv_blocks=32,
        max_model_len=64,
        vocab_size=50,
    )
    s = PrefillScheduler(cfg)
    for i, n in enumerate(prompts):  # distinct tokens: no prefix is shared (all in one step)
        s.add_request(Request(f"r{i}", [1 + i] * n))
    d = s.schedule()
    if chunk_first:  # second step continues chunked requests: context in the cache
        d = s.schedule() or d
    rng = np.random.default_rng(0)
    kc = rng.normal(size=(cfg.num_slots, HKV, D)).astype(np.float32)
    vc = rng.normal(size=(cfg.num_slots, HKV, D)).astype(np.float32)
    q = rng.normal(size=(d.token_capacity, H, D)).astype(np.float32)
    return d, q, kc, vc


def call(d, q, kc, vc, err=None, device="cpu"):
    def t(a):
        return torch.from_numpy(a).to(device)

    return (
        paged_attention(
            t(q),
            t(kc),
            t(vc),
            t(d.block_tables),
            t(d.query_start_loc),
            t(d.seq_lens),
            t(d.positions),
            d.block_size,
            0.25,
            error_counter=err,
        )
        .cpu()
        .numpy()
    )


@pytest.mark.parametrize("H,HKV", [(2, 2), (4, 1)])
@pytest.mark.parametrize("prompts,chunk", [((5, 19, 1), False), ((40, 3), True), ((1,), False)])
def test_matches_reference(device, H, HKV, prompts, chunk):
    d, q, kc, vc = setup(H, HKV, prompts=prompts, chunk_first=chunk)
    got, exp = call(d, q, kc, vc, device=device), ref_attention(q, kc, vc, d, 0.25)
    np.testing.assert_allclose(got, exp, atol=ATOL, rtol=1e-4)
    assert np.all(got[d.num_tokens :] == 0)  # padding tokens read nothing


def test_bad_block_id_is_redirected_and_counted(device):
    d, q, kc, vc = setup(prompts=(5, 19, 1), chunk_first=False)
    exp = ref_attention(q, kc, vc, d, 0.25)
    d.block_tables[1, 2] = 10**6  # request r1, tokens at positions 8..11 onwards use it
    err = new_error_counter(device)
    got = call(d, q, kc, vc, err, device=device)
    assert np.isfinite(got).all()
    first_bad = d.query_start_loc[1] + 8
    assert err.tolist() == [19 - 8, first_bad]
    ok = slice(0, d.query_start_loc[1])  # other requests are untouched
    np.testing.assert_allclose(got[ok], exp[ok], atol=ATOL)
    np.testing.assert_allclose(
        got[first_bad - 8 : first_bad], exp[first_bad - 8 : first_bad], atol=ATOL
    )  # r1's tokens before the bad block are fine too


@pytest.mark.parametrize(
    "make_out,match",
    [
        (lambda q: torch.empty(q.shape[0] - 1, *q.shape[1:]), "out must be"),  # too small
        (lambda q: torch.empty(q.shape, dtype=torch.int32), "out must be"),  # wrong dtype
        (lambda q: torch.empty(q.shape[2], q.shape[1], q.shape[0]).permute(2, 1, 0), "contiguous"),
    ],
)
def test_out_is_checked_before_anything_is_written(make_out, match):
    # (an undersized out once made the kernel write past it: heap corruption)
    d, q, kc, vc = setup()
    t = torch.from_numpy
    with pytest.raises(ValueError, match=match):
        paged_attention(
            t(q), t(kc), t(vc), t(d.block_tables), t(d.query_start_loc), t(d.seq_lens),
            t(d.positions), d.block_size, 0.25, out=make_out(q),
        )  # fmt: skip


# ---- long prefill chunks: the GQA-packed, wgmma-shaped tiles ---------------------------
def test_long_chunks_take_row_owning_wgmma_tiles(monkeypatch):
    from graphbatch.kernels.paged_attention import _tiles

    monkeypatch.setenv("GRAPHBATCH_GPU_TILES", "1")
    # 8 x 4096 tokens: Llama-3.1-8B (4 heads a group, D 128), SmolLM2 (3, D 64)
    assert _tiles(32768, 8, 4, 128, torch.bfloat16) == (64, 64, 4, 3)
    assert _tiles(32768, 8, 3, 64, torch.bfloat16) == (64, 64, 4, 3)
    assert _tiles(64, 16, 4, 128, torch.bfloat16) == (32, 32, 4, 2)  # short chunks
    assert _tiles(32768, 8, 4, 128, torch.float32)[:2] == (16, 16)  # fp32: FMA units


def long_case(H, HKV, D, block_size, seqs, dtype=torch.float16, seed=0):
    """Sequences (context, new tokens) with shuffled blocks and a spare -1 column."""
    g = torch.Generator().manual_seed(seed)
    lens = [c + n for c, n in seqs]
    MB = max(-(-n // block_size) for n in lens) + 1
    num_blocks = sum(-(-n // block_size) for n in lens) + 1
    perm, bt = torch.randperm(num_blocks, generator=g), torch.full((len(seqs), MB), -1)
    used = 0
    for s, n in enumerate(lens):
        nb = -(-n // block_size)
        bt[s, :nb], used = perm[used : used + nb], used + nb
    qsl = torch.tensor([0] + np.cumsum([n for _, n in seqs]).tolist(), dtype=torch.int32)
    pos = torch.cat([torch.arange(c, c + n) for c, n in seqs]).long()
    T, slots = int(qsl[-1]), num_blocks * block_size

    def rand(*shape):
        return torch.randn(shape, generator=g).to(dtype)

    return [
        rand(T, H, D), rand(slots, HKV, D), rand(slots, HKV, D), bt.int(), qsl,
        torch.tensor(lens, dtype=torch.int32), pos, block_size, D**-0.5,
    ]  # fmt: skip


@pytest.mark.parametrize(
    "H,HKV,D,block_size",
    [(8, 2, 64, 16), (6, 2, 128, 4), (3, 1, 64, 128)],  # reshaped pages; one page a tile
)
def test_long_chunk_tiles_match_native(monkeypatch, device, H, HKV, D, block_size):
    # fp16: Triton 3.9's interpreter computes fp16 dots right (bf16 wrongly); the tiles
    # are the long-chunk ones (T * G / S >= 64), full tiles and diagonal ones both run
    from graphbatch.kernels import native

    monkeypatch.setenv("GRAPHBATCH_GPU_TILES", "1")
    args = long_case(H, HKV, D, block_size, [(70, 60), (0, 90), (130, 3)])
    col = 2 if block_size < 64 else 1
    args[3][0, col] = 10**6  # sequence 0's keys col*block_size.. are bad: redirected, counted
    exp = torch.zeros_like(args[0])
    exp_err = new_error_counter()
    native.paged_attention(*args, exp, exp_err)
    err = new_error_counter(device)
    dev = [a.to(device) if isinstance(a, torch.Tensor) else a for a in args]
    got = paged_attention(*dev, error_counter=err).cpu()
    assert err.cpu().tolist() == exp_err.tolist() and exp_err[0] > 0
    bad = torch.zeros(args[0].shape[0], dtype=torch.bool)
    bad[:60] = args[6][:60] >= col * block_size
    assert exp_err.tolist() == [int(bad.sum()), int(bad.nonzero()[0])]
    torch.testing.assert_close(got[~bad].float(), exp[~bad].float(), atol=2e-3, rtol=0)
    assert torch.isfinite(got).all()


def test_empty_cache_counts_rows_and_reads_nothing(device):
    from graphbatch.kernels import native

    args = long_case(4, 2, 16, 4, [(3, 2), (0, 1)], dtype=torch.float32)
    args[1], args[2] = args[1][:0], args[2][:0]  # no block at all: block 0 does not exist
    exp, exp_err = torch.full_like(args[0], 7.0), new_error_counter()
    native.paged_attention(*args, exp, exp_err)
    err = new_error_counter(device)
    dev = [a.to(device) if isinstance(a, torch.Tensor) else a for a in args]
    got = paged_attention(*dev, error_counter=err).cpu()
    assert err.cpu().tolist() == exp_err.tolist() == [3, 0]
    assert not got.any() and not exp.any()
