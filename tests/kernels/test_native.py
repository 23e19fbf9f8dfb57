"""The native CPU path (torch) against the Triton kernels (on a CPU: the interpreter).

Each comparison runs the same call on both paths: native on CPU tensors, Triton on the test
device. Slots must match bit for bit and attention within a per-dtype tolerance, with
equal error counts. The sampler's comparisons are in test_native_sampler.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from graphbatch.kernels import _runtime as rt
from graphbatch.kernels import gather_slots, new_error_counter, scatter_slots, top_p_sample
from graphbatch.kernels.paged_attention import paged_attention

from .native_paths import ENV, INT32_MAX, both, sampler_args

SWITCHES_CPU_KERNELS = True  # conftest: this module picks the path itself
ATTN_ATOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def test_invalid_switch_value_raises(monkeypatch):
    monkeypatch.setenv(ENV, "cuda")
    with pytest.raises(ValueError, match="GRAPHBATCH_CPU_KERNELS='cuda'"):
        rt.cpu_kernels()
    with pytest.raises(ValueError, match=ENV):
        gather_slots(torch.zeros(2, 2), torch.zeros(1, dtype=torch.int64))


def test_kernel_path(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert rt.kernel_path("cpu") == "native" and rt.use_native(torch.zeros(1))
    assert rt.kernel_path(torch.device("cuda", 0)) == "triton"  # a GPU always runs Triton
    monkeypatch.setenv(ENV, "triton")
    assert rt.kernel_path("cpu") == "triton" and not rt.use_native(torch.zeros(1))


def test_native_path_launches_no_triton_kernel(monkeypatch):
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    def refuse(*a, **k):
        raise AssertionError("a Triton kernel ran on the native path")

    for cls in (InterpretedFunction, JITFunction):
        monkeypatch.setattr(cls, "run", refuse)
    monkeypatch.setenv(ENV, "native")
    idx = torch.tensor([1, -1, 0])
    scatter_slots(torch.zeros(2, 3), idx, torch.ones(3, 3))
    gather_slots(torch.zeros(2, 3), idx)
    paged_attention(*attention_case([(2, 3)], 2, 1, 16, 4, torch.float32), error_counter=None)
    top_p_sample(*sampler_args(torch.zeros(2, 5), 1.0, 0.9, 2), 2)


def test_native_keeps_the_argument_checks(monkeypatch):
    monkeypatch.setenv(ENV, "native")
    with pytest.raises(ValueError, match="int32 or int64"):
        gather_slots(torch.zeros(4, 2), torch.zeros(3))
    with pytest.raises(ValueError, match="values must have shape"):
        scatter_slots(torch.zeros(4, 2), torch.zeros(3, dtype=torch.int64), torch.zeros(2, 2))
    args = attention_case([(0, 3)], 2, 2, 16, 4, torch.float32)
    with pytest.raises(ValueError, match="out must be"):
        paged_attention(*args, out=torch.empty(2, 2, 16))
    with pytest.raises(ValueError, match=r"top_p\[0\]"):
        top_p_sample(*sampler_args(torch.zeros(2, 5), 1.0, 0.0, 0), 2)


# ---- gather / scatter: bit-exact ----------------------------------------------------
def slot_indices(N: int, T: int, idx_dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Valid rows, -1 padding and every kind of bad index, at random places."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(-1, N, (T,), generator=g, dtype=torch.int64)
    bad = [N, N + 3, -2, -7, INT32_MAX] + ([2**40, -(2**40)] if idx_dtype == torch.int64 else [])
    where = torch.randperm(T, generator=g)[: min(T // 3, len(bad))]
    idx[where] = torch.tensor(bad[: where.numel()])
    return idx.to(idx_dtype)


def random_rows(shape: tuple, dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if dtype.is_floating_point:
        return torch.randn(shape, generator=g).to(dtype)
    return torch.randint(-100, 100, shape, generator=g).to(dtype)


SLOT_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int8]
SLOT_SHAPES = [(1, (1,), 4), (7, (5,), 13), (33, (2, 65), 40)]


@pytest.mark.parametrize("dtype", SLOT_DTYPES)
@pytest.mark.parametrize("idx_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("N,row,T", SLOT_SHAPES)
def test_gather_bit_exact(monkeypatch, device, dtype, idx_dtype, N, row, T):
    table, idx = random_rows((N, *row), dtype, 0), slot_indices(N, T, idx_dtype, T)
    out = torch.full((T, *row), 7, dtype=dtype)  # every row must be written
    err = torch.tensor([2, 5], dtype=torch.int32)  # counts accumulate, first row is a min

    def call(table, idx, out, err):
        return gather_slots(table, idx, out=out, error_counter=err), err

    (nat, nerr), (tri, terr) = both(monkeypatch, device, call, table, idx, out, err)
    assert torch.equal(nat, tri) and torch.equal(nerr, terr), (nerr, terr)
    ok = (idx >= 0) & (idx < N)
    assert torch.equal(nat[ok], table[idx[ok].long()]) and not nat[~ok].any()
    bad = (~ok & (idx != -1)).nonzero().flatten().tolist()
    assert nerr.tolist() == [2 + len(bad), min([5, *bad])]


@pytest.mark.parametrize("dtype", SLOT_DTYPES)
@pytest.mark.parametrize("idx_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("N,row,T", SLOT_SHAPES)
def test_scatter_bit_exact(monkeypatch, device, dtype, idx_dtype, N, row, T):
    idx = slot_indices(N, T, idx_dtype, T + 1)
    ok = (idx >= 0) & (idx < N)
    idx[ok & (torch.cumsum(ok.long(), 0) > 1)] = -1  # one writer per row: no race to pick
    table, values = random_rows((N, *row), dtype, 1), random_rows((T, *row), dtype, 2)

    def call(table, idx, values):
        err = new_error_counter(table.device)
        scatter_slots(table, idx, values, error_counter=err)
        return table, err

    (nat, nerr), (tri, terr) = both(monkeypatch, device, call, table, idx, values)
    assert torch.equal(nat, tri) and torch.equal(nerr, terr), (nerr, terr)
    bad = (~ok & (idx != -1)).nonzero().flatten().tolist()
    assert nerr.tolist() == [len(bad), min([INT32_MAX, *bad])]


# ---- paged attention: within a tolerance; errors exact -------------------------------
def attention_case(seqs, H, HKV, D, block_size, dtype, pad=0, seed=0):
    """Arguments for sequences given as (context tokens, new tokens), plus ``pad`` rows.

    Blocks are shuffled; each table has a spare column of -1 that no key reaches.
    """
    g = torch.Generator().manual_seed(seed)
    lens = [c + n for c, n in seqs]
    MB = max(-(-n // block_size) for n in lens) + 1
    num_blocks = sum(-(-n // block_size) for n in lens) + 2
    perm, bt = torch.randperm(num_blocks, generator=g), torch.full((len(seqs), MB), -1)
    used = 0
    for s, n in enumerate(lens):
        nb = -(-n // block_size)
        bt[s, :nb], used = perm[used : used + nb], used + nb
    positions = [torch.arange(c, c + n) for c, n in seqs] + [torch.full((pad,), 3)]
    qsl = torch.tensor([0] + np.cumsum([n for _, n in seqs]).tolist())
    T, slots = int(qsl[-1]) + pad, num_blocks * block_size

    def rand(*shape):
        return torch.randn(shape, generator=g).to(dtype)

    return (
        rand(T, H, D), rand(slots, HKV, D), rand(slots, HKV, D), bt.int(), qsl.int(),
        torch.tensor(lens, dtype=torch.int32), torch.cat(positions).long(), block_size,
        D**-0.5,
    )  # fmt: skip


def run_attention(*args):
    err = new_error_counter(args[0].device)
    return paged_attention(*args, error_counter=err), err


ATTN_CASES = {
    "one-seq": ([(0, 7)], 2, 2, 16, 4, 0),
    "gqa-context-padding": ([(5, 9), (0, 1), (17, 3)], 6, 2, 32, 8, 5),
    "mqa-chunked": ([(40, 20), (0, 33)], 4, 1, 16, 16, 3),
    "empty-seq": ([(3, 4), (6, 0), (0, 5)], 3, 1, 64, 4, 2),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", list(ATTN_CASES))
def test_paged_attention_matches_triton(monkeypatch, device, case, dtype):
    args = attention_case(*ATTN_CASES[case][:5], dtype, pad=ATTN_CASES[case][5])
    # Triton 3.9's interpreter multiplies bf16 raw bits in tl.dot: there the Triton
    # reference runs on the same values in fp32 (a GPU runs the bf16 kernel itself)
    cast = torch.float32 if dtype == torch.bfloat16 and rt.interpreting() else None
    (nat, nerr), (tri, terr) = both(monkeypatch, device, run_attention, *args, triton_float=cast)
    assert nerr.tolist() == terr.tolist() == [0, INT32_MAX]
    torch.testing.assert_close(nat.float(), tri.float(), atol=ATTN_ATOL[dtype], rtol=0)
    assert not nat[int(args[4][-1]) :].any()  # padding rows: zeros


@pytest.mark.parametrize("bad_id", [10**6, -3])
def test_paged_attention_bad_blocks_counted_alike(monkeypatch, device, bad_id):
    args = list(attention_case(*ATTN_CASES["gqa-context-padding"][:5], torch.float32, pad=5))
    bt, qsl, pos = args[3], args[4], args[6]
    bt[0, 1] = bad_id  # keys 8..15 of sequence 0: its rows at positions >= 8 are bad
    bt[2, 2] = bad_id  # keys 16..: sequence 2's rows (positions 17..19) are all bad
    (nat, nerr), (tri, terr) = both(monkeypatch, device, run_attention, *args)
    bad = torch.zeros(pos.shape[0], dtype=torch.bool)
    bad[qsl[0] : qsl[1]] = pos[qsl[0] : qsl[1]] >= 8
    bad[qsl[2] : qsl[3]] = True
    rows = bad.nonzero().flatten().tolist()
    assert nerr.tolist() == terr.tolist() == [len(rows), rows[0]]
    torch.testing.assert_close(nat[~bad], tri[~bad], atol=ATTN_ATOL[torch.float32], rtol=0)
    assert torch.isfinite(nat).all()


def test_paged_attention_short_seq_len_and_negative_positions(monkeypatch, device):
    args = list(attention_case(*ATTN_CASES["gqa-context-padding"][:5], torch.float32, pad=5))
    args[5][0] -= 4  # rows past seq_len read only its keys: kv_len = min(pos + 1, seq_len)
    args[6][[2, 10]] = torch.tensor([-1, -5])  # no key at all: zeros, not an error
    (nat, nerr), (tri, terr) = both(monkeypatch, device, run_attention, *args)
    assert nerr.tolist() == terr.tolist() == [0, INT32_MAX]
    torch.testing.assert_close(nat, tri, atol=ATTN_ATOL[torch.float32], rtol=0)
    assert not nat[[2, 10]].any()


def test_paged_attention_hostile_seq_len_is_capped(monkeypatch):
    # seq_len and positions far past the block table: every key past the table is a bad
    # row, counted; nothing [rows, seq_len]-sized is allocated (this would need gigabytes)
    monkeypatch.setenv(ENV, "native")
    args = list(attention_case([(0, 6), (0, 4)], 2, 2, 16, 4, torch.float32))
    args[5][1] = 2**31 - 1
    args[6][6:] = 2**30
    out, err = run_attention(*args)
    assert err.tolist() == [4, 6] and torch.isfinite(out).all()


# ---- paddle ---------------------------------------------------------------------------
def test_paddle_tensors_on_both_paths(monkeypatch, interpreter):
    # the Triton path runs paddle CPU tensors under the interpreter, on a GPU machine too
    paddle = pytest.importorskip("paddle")
    P = paddle.to_tensor
    idx = P(np.array([2, -1, 9, 0], dtype="int64"))
    args = attention_case([(3, 5), (0, 2)], 4, 2, 16, 4, torch.float32, pad=1)
    results = {}
    for path in ("native", "triton"):
        monkeypatch.setenv(ENV, path)
        table = P(np.arange(12, dtype="float32").reshape(4, 3))
        scatter_slots(
            table, P(np.array([1, -1], dtype="int32")), P(np.full((2, 3), -1.0, "float32"))
        )
        rows, err = paddle.zeros([4, 3], "float32"), P(np.array([0, INT32_MAX], dtype="int32"))
        assert gather_slots(table, idx, out=rows, error_counter=err) is rows
        attn = paddle.zeros([8, 4, 16], "float32")
        paged_attention(
            *[P(a.numpy()) if isinstance(a, torch.Tensor) else a for a in args], out=attn
        )
        tokens = top_p_sample(
            *[P(a.numpy()) for a in sampler_args(torch.from_numpy(rows.numpy()), 0.0, 1.0, 0)],
            P(np.array([3], dtype="int32")),
        )  # fmt: skip
        assert isinstance(tokens, paddle.Tensor)
        results[path] = [t.numpy() for t in (table, rows, err, attn, tokens)]
    nat, tri = results["native"], results["triton"]
    for n, t in zip(nat[:3] + nat[4:], tri[:3] + tri[4:], strict=True):
        assert np.array_equal(n, t)
    np.testing.assert_allclose(nat[3], tri[3], atol=ATTN_ATOL[torch.float32], rtol=0)
    assert nat[0][1].tolist() == [-1.0] * 3 and nat[2].tolist() == [1, 2]  # written in place
    assert nat[4].tolist() == [2, 0, 0, -1]
