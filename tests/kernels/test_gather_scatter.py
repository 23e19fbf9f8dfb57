"""gather_slots / scatter_slots against a NumPy reference (exact)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from graphbatch.kernels import gather_slots, new_error_counter, scatter_slots

INT32_MAX = 2**31 - 1
DTYPES = [
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.int8,
    torch.uint8,
    torch.int32,
    torch.int64,
]


def ref_gather(table: np.ndarray, idx: np.ndarray) -> np.ndarray:
    out = np.zeros((idx.shape[0], *table.shape[1:]), dtype=table.dtype)
    ok = (idx >= 0) & (idx < table.shape[0])
    out[ok] = table[idx[ok]]
    return out


def ref_scatter(table: np.ndarray, idx: np.ndarray, values: np.ndarray) -> np.ndarray:
    out = table.copy()
    ok = (idx >= 0) & (idx < table.shape[0])
    out[idx[ok]] = values[ok]
    return out


def make_table(shape, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    if dtype.is_floating_point:
        t = torch.randn(shape, generator=g)
    else:
        t = torch.randint(0, 100, shape, generator=g)
    return t.to(dtype).to(device)


def as_np(t: torch.Tensor) -> np.ndarray:
    return t.float().cpu().numpy() if t.dtype == torch.bfloat16 else t.cpu().numpy()


def first_mismatch(a: np.ndarray, b: np.ndarray) -> str:
    bad = np.argwhere(a != b)
    return (
        ""
        if bad.size == 0
        else f"first mismatch at {tuple(bad[0])}: {a[tuple(bad[0])]} != {b[tuple(bad[0])]}"
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,D,T", [(1, 1, 1), (5, 3, 7), (64, 128, 99), (33, 1000, 17)])
@pytest.mark.parametrize("idx_dtype", [torch.int32, torch.int64])
def test_gather_matches_reference(device, dtype, N, D, T, idx_dtype):
    table = make_table((N, D), dtype, device)
    idx = torch.randint(-1, N, (T,), generator=torch.Generator().manual_seed(T)).to(idx_dtype)
    err = new_error_counter(device)
    out = gather_slots(table, idx.to(device), error_counter=err)
    exp = ref_gather(as_np(table), idx.numpy())
    assert np.array_equal(as_np(out), exp), first_mismatch(as_np(out), exp)
    assert err.tolist() == [0, INT32_MAX]  # -1 is padding, not an error


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,D,T", [(1, 1, 1), (9, 3, 7), (128, 96, 99)])
def test_scatter_matches_reference(device, dtype, N, D, T):
    table = make_table((N, D), dtype, device)
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(1))[: min(T, N)]
    idx = torch.full((T,), -1, dtype=torch.int64)
    idx[: perm.shape[0]] = perm  # unique targets; the rest is padding
    values = make_table((T, D), dtype, device, seed=2)
    exp = ref_scatter(as_np(table), idx.numpy(), as_np(values))
    err = new_error_counter(device)
    scatter_slots(table, idx.to(device), values, error_counter=err)
    assert np.array_equal(as_np(table), exp), first_mismatch(as_np(table), exp)
    assert err[0].item() == 0


def test_multi_dim_rows_kv_cache_shape(device):
    cache = torch.zeros(10, 2, 5, device=device)  # [slots, heads, head_dim]
    vals = torch.randn(3, 2, 5, device=device)
    scatter_slots(cache, torch.tensor([4, -1, 9], device=device), vals)
    got = gather_slots(cache, torch.tensor([9, 4], device=device))
    assert got.shape == (2, 2, 5)
    assert torch.equal(got[0], vals[2]) and torch.equal(got[1], vals[0])


BAD = [10, -2, INT32_MAX, 2**40]


def test_bad_indices_are_counted_and_harmless_gather(device):
    table = make_table((10, 4), torch.float32, device)
    idx = torch.tensor([3, BAD[0], -1, BAD[1], 9, BAD[2], BAD[3]], device=device)
    err = new_error_counter(device)
    out = gather_slots(table, idx, error_counter=err)
    assert err.tolist() == [4, 1]
    assert torch.equal(out[[1, 3, 5, 6, 2]], torch.zeros(5, 4, device=device))
    assert torch.equal(out[0], table[3]) and torch.equal(out[4], table[9])


def test_bad_indices_are_counted_and_harmless_scatter(device):
    # Guard rows around the table catch any write that escapes it.
    backing = make_table((12, 4), torch.float32, device)
    before = backing.clone()
    table = backing[1:11]
    idx = torch.tensor([BAD[2], 0, BAD[0], -1, BAD[1], BAD[3]], device=device)
    values = torch.full((6, 4), 7.0, device=device)
    err = new_error_counter(device)
    scatter_slots(table, idx, values, error_counter=err)
    assert err.tolist() == [4, 0]
    assert torch.equal(backing[0], before[0]) and torch.equal(backing[11], before[11])
    assert torch.equal(table[0], values[1]) and torch.equal(table[1:], before[2:11])


def test_counter_accumulates_and_keeps_first_row(device):
    table = make_table((4, 2), torch.float32, device)
    err = new_error_counter(device)
    gather_slots(table, torch.tensor([0, 0, 0, 4], device=device), error_counter=err)
    gather_slots(table, torch.tensor([5, 0], device=device), error_counter=err)
    assert err.tolist() == [2, 0]


def test_out_is_used_without_allocation(device):
    table = make_table((6, 8), torch.float16, device)
    out = torch.full((3, 8), 5.0, dtype=torch.float16, device=device)
    res = gather_slots(table, torch.tensor([5, -1, 0], device=device), out=out)
    assert res is out and torch.equal(out[1], torch.zeros(8, dtype=torch.float16, device=device))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(table=torch.zeros(4)), "table must have >= 2 dims"),
        (dict(indices=torch.zeros(3)), "int32 or int64"),
        (dict(indices=torch.zeros(3, 1, dtype=torch.int64)), "1-D"),
        (dict(out=torch.zeros(2, 2)), "out must be"),
        (dict(table=torch.zeros(8, 4)[:, :2]), "contiguous"),
        (dict(table=[[1.0]]), "torch or paddle tensor"),
    ],
)
def test_gather_rejects_bad_arguments(kwargs, match):
    args = dict(table=torch.zeros(4, 2), indices=torch.zeros(3, dtype=torch.int64), out=None)
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        gather_slots(args["table"], args["indices"], out=args["out"])


def test_scatter_rejects_mismatched_values():
    with pytest.raises(ValueError, match="values must have shape"):
        scatter_slots(torch.zeros(4, 2), torch.zeros(3, dtype=torch.int64), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="dtype"):
        scatter_slots(
            torch.zeros(4, 2),
            torch.zeros(1, dtype=torch.int64),
            torch.zeros(1, 2, dtype=torch.float16),
        )


def test_paddle_tensors_zero_copy(interpreter):
    # paddle's CPU wheel puts these on the CPU: the interpreter, on a GPU machine too
    paddle = pytest.importorskip("paddle")
    table = paddle.to_tensor(np.arange(12, dtype="float32").reshape(6, 2))
    idx = paddle.to_tensor(np.array([5, -1, 6], dtype="int64"))
    err = paddle.to_tensor(np.array([0, INT32_MAX], dtype="int32"))
    out = gather_slots(table, idx, error_counter=err)
    assert isinstance(out, paddle.Tensor)
    assert out.numpy().tolist() == [[10.0, 11.0], [0.0, 0.0], [0.0, 0.0]]
    assert err.numpy().tolist() == [1, 2]
    scatter_slots(
        table,
        paddle.to_tensor(np.array([0], dtype="int32")),
        paddle.to_tensor(np.array([[-1.0, -2.0]], dtype="float32")),
    )
    assert table.numpy()[0].tolist() == [-1.0, -2.0]  # written in place through DLPack
