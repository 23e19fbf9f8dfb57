"""The native Paddle path (``kernels/native_paddle``) against NumPy references.

Runs without torch: no module-level torch import. Where torch is installed, the sampler
must draw the torch native path's tokens exactly, and attention / slots must agree with
it. Outputs are checked through a second alias of their memory (a reshape of a buffer),
so a kernel that rebinds a tensor to new memory instead of writing into it fails.
"""

from __future__ import annotations

import subprocess
import sys

import graphbatch.kernels.native_paddle as npd
import numpy as np
import paddle
import pytest
from graphbatch.kernels.native_paddle import attention as attention_mod
from graphbatch.kernels.native_paddle import sampling as sampling_mod

INT32_MAX = 2**31 - 1

FLOATS = ("float32", "float16", "bfloat16")
ATTN_ATOL = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 2e-2}


# ---------------------------------------------------------------------------- helpers


def pt(a: np.ndarray, dtype: str | None = None) -> paddle.Tensor:
    """A paddle CPU tensor from NumPy (bfloat16 via float32: NumPy has none)."""
    t = paddle.to_tensor(np.ascontiguousarray(a))
    return t if dtype is None or t.dtype == getattr(paddle, dtype) else t.astype(dtype)


def npy(t: paddle.Tensor) -> np.ndarray:
    return t.astype("float32").numpy() if t.dtype == paddle.bfloat16 else t.numpy()


def new_err(count: int = 0, first: int = INT32_MAX) -> paddle.Tensor:
    return paddle.to_tensor([count, first], dtype="int32")


def aliased(shape: list[int], dtype: str, fill: float = 0) -> tuple[paddle.Tensor, paddle.Tensor]:
    """(tensor of ``shape``, flat buffer it aliases): results must show in the buffer."""
    buf = paddle.full([int(np.prod(shape))], fill, dtype=dtype)
    t = buf.reshape(shape)
    if t.data_ptr() != buf.data_ptr():
        raise RuntimeError("a contiguous paddle reshape no longer aliases")
    return t, buf


def ref_err(bad: np.ndarray, count: int = 0, first: int = INT32_MAX) -> list[int]:
    rows = np.flatnonzero(bad)
    return [count + len(rows), min(first, int(rows[0])) if len(rows) else first]


def rand_table(rng, shape, dtype: str) -> np.ndarray:
    if dtype == "bool":
        return rng.random(shape) < 0.5
    if dtype.startswith("int"):
        return rng.integers(-100, 100, shape).astype(dtype)
    x = rng.standard_normal(shape).astype(np.float32)
    return npy(pt(x, dtype)) if dtype == "bfloat16" else x.astype(dtype)


def torch_view(t: paddle.Tensor):
    import torch

    return torch.utils.dlpack.from_dlpack(t.__dlpack__())


# ---------------------------------------------------------------------------- facts


def test_paddle_inplace_facts_the_kernels_rely_on():
    """Paddle 3.x CPU: a contiguous reshape, a row slice and a dtype view alias their
    base; assign(output=), slice assignment, zero_, index_put_ and scatter_ write
    through them."""
    base = paddle.zeros([4, 6], dtype="float32")
    ptr = base.data_ptr()
    flat = base.reshape([24])
    words = base.view("int64")  # [4, 3]
    assert flat.data_ptr() == ptr and words.data_ptr() == ptr and words.shape == [4, 3]
    paddle.assign(paddle.ones([24]), output=flat)
    assert base.data_ptr() == ptr and float(base.sum()) == 24
    base[1:3] = paddle.full([2, 6], 2.0)
    assert float(flat[6]) == 2.0
    base[1:2].zero_()
    assert float(flat[6]) == 0.0 and float(flat[12]) == 2.0
    one_bits = paddle.ones([1, 6], dtype="float32").view("int64")
    words.index_put_((paddle.to_tensor([3]),), one_bits)
    assert base[3].tolist() == [1.0] * 6 and base.data_ptr() == ptr
    two_bits = paddle.full([1, 6], 2.0, dtype="float32").view("int64")
    words.scatter_(paddle.to_tensor([0]), two_bits, overwrite=True)
    assert base[0].tolist() == [2.0] * 6 and base.data_ptr() == ptr


def test_no_torch_import():
    """Loading the package, and graphbatch.kernels with it, imports no torch when torch
    is not there to import (blocked here: ``sys.modules['torch'] = None``)."""
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # any import of torch now fails\n"
        "import importlib.util\n"
        "real = importlib.util.find_spec\n"
        "importlib.util.find_spec = lambda n, *a: None if n == 'torch' else real(n, *a)\n"
        "import graphbatch.kernels.native_paddle\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


# ---------------------------------------------------------------------------- slots


def _idx_case(rng, N: int, T: int) -> np.ndarray:
    idx = rng.integers(0, max(N, 1), T)
    pick = rng.random(T)
    idx[pick < 0.15] = -1  # padding
    idx[(pick >= 0.15) & (pick < 0.25)] = N + rng.integers(0, 3)  # past the end
    idx[(pick >= 0.25) & (pick < 0.3)] = -2 - rng.integers(0, 5)  # negative, not padding
    return idx


@pytest.mark.parametrize(
    "dtype", ["float32", "float16", "bfloat16", "float64", "int8", "int32", "int64", "bool"]
)
@pytest.mark.parametrize("row_shape", [(3,), (2, 5), (64,)])
@pytest.mark.parametrize("idx_dtype", ["int32", "int64"])
def test_gather_matches_numpy(dtype, row_shape, idx_dtype):
    rng = np.random.default_rng(len(row_shape) * 7 + len(dtype))
    N, T = 11, 37
    table = rand_table(rng, (N, *row_shape), dtype)
    idx = _idx_case(rng, N, T)
    out, buf = aliased([T, *row_shape], dtype, fill=1)
    ptr = out.data_ptr()
    err = new_err(2, 30)
    npd.gather_slots(pt(table, dtype), pt(idx.astype(idx_dtype)), out, err)
    ok = (idx >= 0) & (idx < N)
    want = np.where(ok.reshape(-1, *[1] * len(row_shape)), table[np.clip(idx, 0, N - 1)], 0)
    assert out.data_ptr() == ptr
    np.testing.assert_array_equal(npy(buf).reshape(T, *row_shape), want.astype(npy(out).dtype))
    assert err.tolist() == ref_err(~ok & (idx != -1), 2, 30)


def test_gather_all_in_range_and_edge_sizes():
    rng = np.random.default_rng(1)
    table = rng.standard_normal((6, 4)).astype(np.float32)
    idx = np.array([5, 0, 0, 3])
    out, buf = aliased([4, 4], "float32", fill=7)
    err = new_err()
    npd.gather_slots(pt(table), pt(idx), out, err)
    np.testing.assert_array_equal(buf.numpy().reshape(4, 4), table[idx])
    assert err.tolist() == [0, INT32_MAX]
    # T == 0: nothing written, nothing counted
    npd.gather_slots(pt(table), pt(np.zeros(0, np.int64)), paddle.zeros([0, 4]), err)
    assert err.tolist() == [0, INT32_MAX]
    # N == 0: every row zero; -1 is padding, the rest are errors
    out, buf = aliased([3, 4], "bfloat16", fill=5)
    npd.gather_slots(paddle.zeros([0, 4], "bfloat16"), pt(np.array([-1, 0, 2])), out, err)
    assert npy(buf).tolist() == [0.0] * 12 and err.tolist() == [2, 1]
    # no counter
    out = paddle.full([2, 4], 3.0)
    npd.gather_slots(pt(table), pt(np.array([9, 1])), out, None)
    np.testing.assert_array_equal(out.numpy(), np.stack([np.zeros(4, np.float32), table[1]]))


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "int16", "uint8", "bool"])
@pytest.mark.parametrize("row_shape", [(3,), (3, 64)])
def test_scatter_matches_numpy(dtype, row_shape):
    rng = np.random.default_rng(len(row_shape) + len(dtype))
    N, T = 13, 29
    table = rand_table(rng, (N, *row_shape), dtype)
    values = rand_table(rng, (T, *row_shape), dtype)
    idx = _idx_case(rng, N, T)
    idx[:4] = [2, 2, 5, 2]  # duplicates: one of the writers wins
    tab, buf = aliased([N, *row_shape], dtype)
    paddle.assign(pt(table, dtype), output=tab)
    ptr = tab.data_ptr()
    err = new_err()
    npd.scatter_slots(tab, pt(idx), pt(values, dtype), err)
    got = npy(buf).reshape(N, *row_shape)
    ok = (idx >= 0) & (idx < N)
    assert tab.data_ptr() == ptr
    for n in range(N):
        writers = np.flatnonzero(ok & (idx == n))
        if len(writers) == 0:
            np.testing.assert_array_equal(got[n], table[n].astype(got.dtype))
        else:  # one writer's whole row
            assert any(np.array_equal(got[n], values[w].astype(got.dtype)) for w in writers)
    assert err.tolist() == ref_err(~ok & (idx != -1))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_slots_read_and_write_row_slices_at_a_byte_offset(dtype):
    # the step's K is a row slice of a bigger tensor; Paddle's view(dtype) to a wider word
    # misplaces a nonzero offset, so such rows must move as same-width words
    rng = np.random.default_rng(3)
    big = pt(rand_table(rng, (8, 3, 16), dtype), dtype)
    values = big[5:7]  # starts 5 rows in
    table, buf = aliased([10, 3, 16], dtype)
    table.zero_()
    npd.scatter_slots(table, pt(np.array([4, -1])), values[0:2], None)
    npd.scatter_slots(table, pt(np.array([7], np.int64)), big[2:3], None)
    got = npy(buf).reshape(10, 3, 16)
    want = npy(big)
    np.testing.assert_array_equal(got[4], want[5])
    np.testing.assert_array_equal(got[7], want[2])
    host, out_buf = aliased([6, 3, 16], dtype)
    out = host[3:5]  # a destination at an offset too
    npd.gather_slots(big, pt(np.array([6, 1])), out, None)
    np.testing.assert_array_equal(npy(out_buf).reshape(6, 3, 16)[3:5], want[[6, 1]])


def test_scatter_edge_sizes():
    err = new_err(1, 0)
    tab = paddle.zeros([0, 4])
    npd.scatter_slots(tab, pt(np.array([-1, 0, 3])), paddle.ones([3, 4]), err)
    assert err.tolist() == [3, 0]  # counts add; the first bad row keeps the minimum
    tab = paddle.zeros([3, 2])
    npd.scatter_slots(tab, pt(np.zeros(0, np.int32)), paddle.ones([0, 2]), err)
    npd.scatter_slots(tab, pt(np.array([-1, 7], np.int32)), paddle.ones([2, 2]), None)
    assert float(tab.abs().sum()) == 0 and err.tolist() == [3, 0]


def test_layer_signal_writes_flags_in_place():
    flags, buf = aliased([5], "int64")
    step = paddle.to_tensor([41], dtype="int64")
    npd.layer_signal(step, flags, 3)
    npd.layer_signal(paddle.to_tensor([42], dtype="int64"), flags, 0)
    assert buf.tolist() == [42, 0, 0, 41, 0] and step.tolist() == [41]


def test_slots_match_torch_native():
    pytest.importorskip("torch")
    from graphbatch.kernels import native as tn

    rng = np.random.default_rng(5)
    for dtype in ("float32", "bfloat16"):
        table = pt(rand_table(rng, (9, 12), dtype), dtype)
        idx = pt(_idx_case(rng, 9, 40))
        outs, errs = [paddle.zeros([40, 12], dtype) for _ in range(2)], [new_err(), new_err()]
        npd.gather_slots(table, idx, outs[0], errs[0])
        tn.gather_slots(
            torch_view(table), torch_view(idx), torch_view(outs[1]), torch_view(errs[1])
        )
        assert bool((outs[0] == outs[1]).all()) and errs[0].tolist() == errs[1].tolist()


# ---------------------------------------------------------------------------- attention


def ref_attention(q, kc, vc, bt, qsl, sl, pos, bs, scale):
    """(out [T, H, D] float64, error counter): the contract, row by row, in float64."""
    T, H, D = q.shape
    HKV, nb, MB = kc.shape[1], kc.shape[0] // bs, bt.shape[1]
    G = H // HKV
    out = np.zeros((T, H, D))
    bad = np.zeros(T, bool)
    for s in range(len(sl)):
        a = min(max(int(qsl[s]), 0), T)
        b = min(max(int(qsl[s + 1]), a), T)
        for r in range(a, b):
            L = max(min(int(np.int64(pos[r]).astype(np.int32)) + 1, int(sl[s])), 0)
            cols = np.arange(-(-L // bs))
            blk = np.where(cols < MB, bt[s, np.minimum(cols, MB - 1)] if MB else -1, -1)
            bad[r] = bool(((blk < 0) | (blk >= nb)).any())
            if nb == 0 or L == 0:
                continue
            j = np.arange(min(L, MB * bs))  # keys past the table do not contribute
            page = bt[s, j // bs]
            slot = np.where((page >= 0) & (page < nb), page, 0) * bs + j % bs
            for h in range(H):
                k = kc[slot, h // G].astype(np.float64)
                v = vc[slot, h // G].astype(np.float64)
                w = k @ q[r, h].astype(np.float64) * scale
                w = np.exp(w - w.max())
                out[r, h] = (w / w.sum()) @ v
    return out, ref_err(bad)


def attention_case(rng, seqs, H, HKV, D, bs, dtype, num_blocks=None, MB=None, pad=0):
    """seqs: (query rows, context before them, seq_len slack) per sequence."""
    S = len(seqs)
    T = sum(m for m, _, _ in seqs) + pad
    need = [-(-(m + c + x) // bs) for m, c, x in seqs]
    MB = max(need) if MB is None else MB
    num_blocks = S * MB + 1 if num_blocks is None else num_blocks
    q = rand_table(rng, (T, H, D), dtype)
    kc = rand_table(rng, (num_blocks * bs, HKV, D), dtype)
    vc = rand_table(rng, (num_blocks * bs, HKV, D), dtype)
    bt = rng.permutation(max(num_blocks, S * MB))[: S * MB].reshape(S, MB).astype(np.int32)
    qsl = np.concatenate([[0], np.cumsum([m for m, _, _ in seqs])]).astype(np.int32)
    sl = np.array([m + c + x for m, c, x in seqs], np.int32)
    pos = np.concatenate([np.arange(m) + c for m, c, _ in seqs] + [np.zeros(pad)]).astype(np.int64)
    return q, kc, vc, bt, qsl, sl, pos


def run_attention(case, bs, scale, dtype, err_init=(0, INT32_MAX)):
    q, kc, vc, bt, qsl, sl, pos = case
    out, buf = aliased(list(q.shape), dtype, fill=9)
    err = new_err(*err_init)
    args = [pt(q, dtype), pt(kc, dtype), pt(vc, dtype), pt(bt), pt(qsl), pt(sl), pt(pos)]
    npd.paged_attention(*args, bs, scale, out, err)
    return npy(buf).reshape(q.shape), err.tolist()


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize(
    "H, HKV, D, bs",
    [(4, 4, 16, 4), (4, 2, 32, 16), (9, 3, 64, 16), (8, 1, 16, 8)],
)
def test_attention_matches_numpy(dtype, H, HKV, D, bs):
    rng = np.random.default_rng(H * 100 + D + bs)
    # fresh prefill, chunked prefill with context, seq_len beyond the positions, an empty
    # sequence, and padding rows after qsl[S]
    seqs = [(13, 0, 0), (7, 9, 0), (0, 0, 0), (5, 3, 4)]
    case = attention_case(rng, seqs, H, HKV, D, bs, dtype, pad=3)
    got, err = run_attention(case, bs, 0.3, dtype)
    want, want_err = ref_attention(*case, bs, 0.3)
    np.testing.assert_allclose(got, want, atol=ATTN_ATOL[dtype], rtol=0)
    assert err == want_err == [0, INT32_MAX]
    assert np.all(got[-3:] == 0)  # padding rows


def test_attention_bad_blocks_and_rows_without_keys():
    rng = np.random.default_rng(3)
    bs, H, HKV, D = 4, 4, 2, 16
    seqs = [(6, 2, 0), (5, 0, 0), (4, 0, 0), (3, 0, 0)]
    q, kc, vc, bt, qsl, sl, pos = attention_case(rng, seqs, H, HKV, D, bs, "float32", MB=3)
    bt[0, 1] = -3  # keys 4..7 of sequence 0: its rows with kv_len > 4 are bad
    bt[1, 0] = kc.shape[0] // bs  # == num_blocks: every row of sequence 1 is bad
    sl[2] = 0  # no keys: zeros, not counted
    pos[qsl[3]] = -1  # a row at position -1 has no key
    pos[qsl[3] + 1] = 20  # kv_len min(21, 14) = 14 keys > 3 blocks x 4: past the table
    sl[3] = 14
    case = (q, kc, vc, bt, qsl, sl, pos)
    got, err = run_attention(case, bs, 0.25, "float32", err_init=(1, 100))
    want, want_err = ref_attention(*case, bs, 0.25)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert err == [want_err[0] + 1, want_err[1]] and want_err[0] > 0
    assert np.all(got[qsl[2] : qsl[3]] == 0) and np.all(got[qsl[3]] == 0)


def test_attention_without_blocks_counts_rows_with_keys():
    rng = np.random.default_rng(4)
    q, _, _, bt, qsl, sl, pos = attention_case(rng, [(3, 0, 0), (2, 0, 0)], 2, 1, 16, 4, "float32")
    kc = np.zeros((0, 1, 16), np.float32)
    sl[1] = 0
    got, err = run_attention((q, kc, kc, bt, qsl, sl, pos), 4, 1.0, "float32")
    assert np.all(got == 0) and err == [3, 0]


@pytest.mark.parametrize("knob, value", [("_SCORE_ELEMENTS", 6 * 40), ("_ROW_CHUNK", 4)])
def test_attention_row_chunks_match(monkeypatch, knob, value):
    """A few query rows a matmul (by the score bound, or the row cap), each chunk reading
    only the keys its rows see: the same result."""
    rng = np.random.default_rng(6)
    case = attention_case(rng, [(21, 5, 2), (9, 0, 0)], 6, 2, 16, 4, "float32")
    case[3][1, 1] = -1  # a bad block: counted the same either way
    case[6][3] = -1  # a row without keys inside a chunk
    whole, err = run_attention(case, 4, 0.25, "float32")
    monkeypatch.setattr(attention_mod, knob, value)
    chunked, err2 = run_attention(case, 4, 0.25, "float32")
    # the same sums in other matmul blockings: equal up to fp32 rounding
    np.testing.assert_allclose(whole, chunked, atol=1e-6, rtol=0)
    np.testing.assert_allclose(whole, ref_attention(*case, 4, 0.25)[0], atol=1e-5, rtol=0)
    assert err == err2 and err[0] > 0


def test_attention_empty_batch():
    out = paddle.zeros([0, 2, 16])
    err = new_err()
    args = [paddle.zeros([0, 2, 16]), paddle.zeros([8, 1, 16]), paddle.zeros([8, 1, 16])]
    ints = [pt(np.zeros((1, 2), np.int32)), pt(np.zeros(2, np.int32)), pt(np.zeros(1, np.int32))]
    npd.paged_attention(*args, *ints, pt(np.zeros(0, np.int64)), 4, 1.0, out, err)
    assert err.tolist() == [0, INT32_MAX]


@pytest.mark.parametrize("dtype", FLOATS)
def test_attention_matches_torch_native(dtype):
    pytest.importorskip("torch")
    from graphbatch.kernels import native as tn

    rng = np.random.default_rng(8)
    q, kc, vc, bt, qsl, sl, pos = attention_case(
        rng, [(40, 0, 0), (17, 30, 3), (9, 0, 0)], 9, 3, 64, 16, dtype, pad=2
    )
    bt[2, 0] = -1
    args = [pt(q, dtype), pt(kc, dtype), pt(vc, dtype), pt(bt), pt(qsl), pt(sl), pt(pos)]
    outs, errs = [paddle.zeros(list(q.shape), dtype) for _ in range(2)], [new_err(), new_err()]
    npd.paged_attention(*args, 16, 0.125, outs[0], errs[0])
    tn.paged_attention(*map(torch_view, args), 16, 0.125, torch_view(outs[1]), torch_view(errs[1]))
    np.testing.assert_allclose(npy(outs[0]), npy(outs[1]), atol=ATTN_ATOL[dtype], rtol=0)
    assert errs[0].tolist() == errs[1].tolist() and errs[0].tolist()[0] == 9


# ---------------------------------------------------------------------------- sampling


def ref_keep(x: np.ndarray, t: float, top_p: float, top_k: int, min_p: float) -> np.ndarray:
    """[V] bool: the kept set of a sampling row (finite max, t > 0), in float64."""
    x = x.astype(np.float64)
    V = x.shape[0]
    logit = (x - x.max()) / t
    keep = x > -np.inf
    if 0 < top_k < V:
        keep &= x >= np.sort(x)[::-1][top_k - 1]
    if top_p < 1:
        p = np.where(keep, np.exp(logit), 0.0)
        order = np.argsort(-x, kind="stable")
        cum = np.cumsum(p[order]) / p.sum()
        i = min(int(np.searchsorted(cum, top_p)), int(keep.sum()) - 1)
        keep &= x >= x[order[i]]
    if min_p > 0:
        keep &= logit >= np.log(min_p)
    return keep


def params_of(S: int, temperature=1.0, top_p=1.0, top_k=0, min_p=None, seed=7, offsets=None,
              top_k_dtype="int32") -> dict[str, paddle.Tensor]:  # fmt: skip
    def col(v, dt):
        return pt(np.broadcast_to(np.asarray(v, dtype=dt), (S,)).copy())

    p = {
        "temperature": col(temperature, np.float32),
        "top_p": col(top_p, np.float32),
        "top_k": col(top_k, top_k_dtype),
        "seeds": col(seed, np.int64),
        "offsets": col(np.arange(S) if offsets is None else offsets, np.int64),
    }
    if min_p is not None:
        p["min_p"] = col(min_p, np.float32)
    return p


def sample(logits, params, num_valid=None, out_dtype="int64", want_lp=True, err=None):
    S = logits.shape[0]
    out, obuf = aliased([S], out_dtype, fill=-7)
    lp, lbuf = aliased([S], "float32", fill=3.0) if want_lp else (None, None)
    npd.top_p_sample(logits, params, S if num_valid is None else num_valid, out, lp, err)
    return obuf.numpy(), (lbuf.numpy() if want_lp else None)


def log_softmax_at(x: np.ndarray, tok: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(1, keepdims=True)
    lse = np.log(np.exp(x - m).sum(1)) + m[:, 0]
    return x[np.arange(len(tok)), tok] - lse


CONFIGS = {
    "plain": dict(temperature=1.0),
    "cold": dict(temperature=0.6),
    "top_k": dict(temperature=1.0, top_k=4),
    "top_p": dict(temperature=0.9, top_p=0.7),
    "min_p": dict(temperature=1.0, min_p=0.08),
    "all": dict(temperature=1.3, top_k=6, top_p=0.85, min_p=0.05),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_sampler_frequencies_match_numpy(name):
    """4000 draws of one row (offsets 0..3999): every token in the NumPy kept set, and
    each token's frequency within 5 sigma (+ 1 / n) of its renormalised probability."""
    cfg = CONFIGS[name]
    rng = np.random.default_rng(11)
    V, n = 12, 4000
    row = (rng.standard_normal(V) * 1.5).astype(np.float32)
    keep = ref_keep(row, cfg["temperature"], cfg.get("top_p", 1.0), cfg.get("top_k", 0),
                    cfg.get("min_p", 0.0))  # fmt: skip
    tokens, lp = sample(pt(np.tile(row, (n, 1))), params_of(n, **cfg))
    assert keep[tokens].all()
    logit = (row.astype(np.float64) - row.max()) / cfg["temperature"]
    p = np.where(keep, np.exp(logit), 0.0)
    p /= p.sum()
    freq = np.bincount(tokens, minlength=V) / n
    tol = 5 * np.sqrt(p * (1 - p) / n) + 1 / n
    assert np.all(np.abs(freq - p) <= tol), (freq, p)
    np.testing.assert_allclose(lp, log_softmax_at(np.tile(row, (n, 1)), tokens), atol=1e-5)


@pytest.mark.parametrize("dtype", FLOATS)
def test_sampler_kept_sets_many_rows(dtype):
    """Random rows and per-row parameters over a 3000 vocabulary: every draw is kept."""
    rng = np.random.default_rng(12)
    S, V = 48, 3000
    x = npy(pt((rng.standard_normal((S, V)) * 2).astype(np.float32), dtype))
    t = rng.uniform(0.3, 1.5, S).astype(np.float32)
    top_p = rng.choice([1.0, 0.5, 0.9, 0.99], S).astype(np.float32)
    top_k = rng.choice([0, 1, 5, 50, V], S)
    min_p = rng.choice([0.0, 0.02, 0.3], S).astype(np.float32)
    params = params_of(S, temperature=t, top_p=top_p, top_k=top_k, min_p=min_p, seed=3)
    tokens, lp = sample(pt(x, dtype), params)
    for r in range(S):
        assert ref_keep(x[r], t[r], top_p[r], top_k[r], min_p[r])[tokens[r]], r
    np.testing.assert_allclose(lp, log_softmax_at(x, tokens), atol=2e-5)


def test_sampler_wide_nucleus_sorts_past_the_prefix():
    """A flat row whose 0.99 nucleus holds far more than the 1024 first sorted values."""
    rng = np.random.default_rng(13)
    S, V = 64, 6000
    x = rng.uniform(-0.01, 0.01, (S, V)).astype(np.float32)
    x[:, :3] = -30.0  # out of the nucleus
    tokens, _ = sample(pt(x), params_of(S, top_p=0.99))
    for r in range(S):
        assert ref_keep(x[r], 1.0, 0.99, 0, 0.0)[tokens[r]]
    assert len(set(tokens.tolist())) > S // 2  # spread over the nucleus


def test_sampler_ties_are_kept():
    # top_k 2 keeps all three 5s; top_p 0.3 reached by one 4 keeps both (ties at the cut)
    x = np.array([[5, 1, 5, 5, 0], [4, 0, 4, -1, -2]], np.float32)
    S = 3000
    logits = pt(np.repeat(x, S // 2, axis=0))
    params = params_of(S, top_k=np.repeat([2, 0], S // 2), top_p=np.repeat([1.0, 0.3], S // 2))
    tokens, _ = sample(logits, params)
    assert set(tokens[: S // 2]) == {0, 2, 3} and set(tokens[S // 2 :]) == {0, 2}


def test_sampler_greedy_bad_rows_and_padding():
    inf, nan = np.inf, np.nan
    x = np.array(
        [
            [0.0, 3.0, 3.0, 1.0],  # greedy: the first max
            [0.0, nan, 9.0, 1.0],  # NaN: counted, argmax over the rest
            [-inf, -inf, -inf, -inf],  # no finite logit: counted
            [1.0, inf, 2.0, inf],  # +inf max: counted, the first +inf
            [0.5, 2.0, -1.0, 0.0],  # samples
            [9.0, 9.0, 9.0, 9.0],  # past num_valid
        ],
        np.float32,
    )
    params = params_of(6, temperature=[0.0, 1.0, 1.0, 0.7, 1.0, 1.0])
    err = new_err(4, 3)
    for nv in (5, pt(np.array([5], np.int32))):
        tokens, lp = sample(pt(x), params, num_valid=nv, err=err, out_dtype="int32")
        assert tokens[:4].tolist() == [1, 2, 0, 1] and tokens[5] == -1 and 0 <= tokens[4] < 4
        assert np.isnan(lp[1:4]).all() and np.isnan(lp[5])
        np.testing.assert_allclose(lp[[0, 4]], log_softmax_at(x[[0, 4]], tokens[[0, 4]]), atol=1e-6)
    assert err.tolist() == [4 + 2 * 3, 1]
    tokens, lp = sample(pt(x), params, num_valid=0)
    assert (tokens == -1).all() and np.isnan(lp).all()
    tokens, lp = sample(pt(x), params, num_valid=pt(np.array([9], np.int32)), want_lp=False)
    assert 0 <= tokens[5] < 4 and lp is None  # num_valid past S: clamped to S


def test_sampler_is_deterministic_and_offset_dependent():
    rng = np.random.default_rng(14)
    x = pt(rng.standard_normal((32, 500)).astype(np.float32))
    a, _ = sample(x, params_of(32, top_k=100, seed=5))
    b, _ = sample(x, params_of(32, top_k=100, seed=5))
    c, _ = sample(x, params_of(32, top_k=100, seed=5, offsets=np.arange(32) + 1000))
    assert (a == b).all() and (a != c).any()


@pytest.mark.parametrize("min_p", [None, 0.01])
def test_sampler_prefix_draw_equals_the_row_draw(min_p):
    """_draw_prefix (kept set inside the sorted prefix) picks the token the row-wide
    Gumbel-max picks: same noise per token index, same tie rule."""
    rng = np.random.default_rng(17)
    S, V, k = 40, 700, 25
    x = pt(rng.standard_normal((S, V)).astype(np.float32))
    x[3, 10:14] = 50.0  # equal logits at the top: the noise alone orders them
    m = paddle.amax(x, axis=1)
    logit = (x - m[:, None]) * 1.25
    vals, order = paddle.topk(x, k + 1, axis=1)
    thr = vals[:, k - 1]
    p = params_of(S, seed=rng.integers(0, 2**62, S), offsets=rng.integers(0, 2**40, S))
    keep = x >= thr[:, None]
    log_min_p = None
    if min_p is not None:
        log_min_p = paddle.full([S], np.log(min_p), dtype="float32")
        keep &= logit >= log_min_p[:, None]
    noisy = sampling_mod._noisy(logit, keep, p["seeds"], p["offsets"])
    row = paddle.argmax(noisy, axis=1)
    pre = sampling_mod._draw_prefix(logit, thr, vals, order, log_min_p, p["seeds"], p["offsets"])
    assert row.tolist() == pre.tolist()


def test_sampler_row_chunks_match(monkeypatch):
    rng = np.random.default_rng(15)
    x = rng.standard_normal((40, 300)).astype(np.float32)
    x[29, 7] = np.nan
    params = params_of(40, top_p=0.8, top_k=np.arange(40) % 7, min_p=0.01, top_k_dtype="int64")
    err = new_err()
    whole, lp = sample(pt(x), params, num_valid=35, err=err)
    monkeypatch.setattr(sampling_mod, "_CHUNK_ELEMENTS", 300 * 8)  # 8 rows a pass
    err2 = new_err()
    chunked, lp2 = sample(pt(x), params, num_valid=35, err=err2)
    assert (whole == chunked).all() and err.tolist() == err2.tolist() == [1, 29]
    np.testing.assert_array_equal(lp, lp2)


@pytest.mark.parametrize("dtype", FLOATS)
def test_sampler_draws_the_torch_native_tokens(dtype):
    pytest.importorskip("torch")
    from graphbatch.kernels import native as tn

    rng = np.random.default_rng(16)
    S, V = 64, 4096
    x = (rng.standard_normal((S, V)) * 3).astype(np.float32)
    x[5, 100] = np.nan
    x[9] = -np.inf
    seeds = rng.integers(0, 2**62, S)
    offsets = rng.integers(-(2**40), 2**40, S)  # negative offsets: arithmetic shifts
    sharp, flat, tied = pt(x, dtype), pt(x * 0.05, dtype), pt(np.round(x), dtype)
    cases = [
        (sharp, dict()),
        (sharp, dict(top_k=50)),
        (sharp, dict(top_p=0.9)),
        (sharp, dict(top_k=50, top_p=0.9, temperature=0.7)),
        (sharp, dict(min_p=0.05, temperature=1.2)),
        (sharp, dict(top_k=rng.choice([0, 1, 20, V], S), top_p=rng.choice([1.0, 0.5, 0.95], S),
                     min_p=rng.choice([0.0, 0.1], S),
                     temperature=rng.choice([0.0, 0.5, 1.0], S))),
        (flat, dict(top_p=0.95)),  # a nucleus wider than the first sorted prefix
        (flat, dict(top_k=3000, top_p=0.8)),
        (tied, dict(top_k=50, top_p=0.9)),  # ties at the k-th value past the prefix
        (tied, dict(top_k=7)),
    ]  # fmt: skip
    for logits, cfg in cases:
        params = params_of(S, seed=seeds, offsets=offsets, **cfg)
        outs = [paddle.zeros([S], "int64") for _ in range(2)]
        lps = [paddle.zeros([S]) for _ in range(2)]
        errs = [new_err(), new_err()]
        npd.top_p_sample(logits, params, 60, outs[0], lps[0], errs[0])
        tparams = {k: torch_view(v) for k, v in params.items()}
        tn.top_p_sample(
            torch_view(logits), tparams, 60, *map(torch_view, (outs[1], lps[1], errs[1]))
        )
        assert outs[0].tolist() == outs[1].tolist(), cfg
        np.testing.assert_allclose(lps[0].numpy(), lps[1].numpy(), atol=2e-5, equal_nan=True)
        assert errs[0].tolist() == errs[1].tolist() == [2, 5]
