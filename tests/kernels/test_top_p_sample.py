"""top_p_sample against a NumPy reference: support, distribution, edge cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from graphbatch.kernels import new_error_counter, top_p_sample

INT32_MAX = 2**31 - 1
# The kernel sums probability mass in fp32 in vocabulary order; the reference in fp64
# after a sort. A token at the nucleus boundary may flip within this much mass.
NUCLEUS_MASS_TOL = 1e-4
TV_TOL = 0.04  # total-variation distance allowed between sample and reference frequencies
NUM_DRAWS = 4096


def ref_kept(logits: np.ndarray, temperature: float, top_p: float, top_k: int) -> np.ndarray:
    """Boolean mask of the tokens the sampler may return for one row."""
    x = logits.astype(np.float64)
    V = x.shape[0]
    if temperature == 0:
        return x == x.max()
    x = x / temperature
    p = np.exp(x - x.max())
    p /= p.sum()
    thr = -np.inf
    if 0 < top_k < V:
        thr = max(thr, np.sort(x)[::-1][top_k - 1])
    if top_p < 1:
        order = np.argsort(-x, kind="stable")
        csum = np.cumsum(p[order])
        cut = min(int(np.searchsorted(csum, top_p)), V - 1)  # first index reaching top_p
        thr = max(thr, x[order[cut]])
    return x >= thr


def ref_probs(logits, temperature, top_p, top_k) -> np.ndarray:
    keep = ref_kept(logits, temperature, top_p, top_k)
    x = logits.astype(np.float64) / temperature
    p = np.where(keep, np.exp(x - x.max()), 0.0)
    return p / p.sum()


def run(logits, temperature, top_p, top_k, seeds=None, offsets=None, num_valid=None, **kw):
    S = logits.shape[0]
    dev = logits.device
    f = lambda v, dt: torch.as_tensor(v, dtype=dt).expand(S).contiguous().to(dev)  # noqa: E731
    seeds = f(0 if seeds is None else seeds, torch.int64)
    offsets = f(0 if offsets is None else offsets, torch.int64)
    return top_p_sample(
        logits,
        f(temperature, torch.float32),
        f(top_p, torch.float32),
        f(top_k, torch.int32),
        seeds,
        offsets,
        S if num_valid is None else num_valid,
        **kw,
    )


FLOATS = (torch.float32, torch.float16, torch.bfloat16)
SHAPES = [(1, 1), (7, 111), (99, 999), (7, 4097)]


@pytest.mark.parametrize(
    "S,V,dtype",
    [(S, V, dt) for S, V in SHAPES for dt in FLOATS] + [(1, 128256, torch.float32)],
)
def test_samples_inside_reference_set(device, S, V, dtype):
    g = torch.Generator().manual_seed(S * 7 + V)
    logits = (torch.randn(S, V, generator=g) * 4).to(dtype).to(device)
    temps = [0.0, 0.5, 1.0, 2.0]
    tops = [0.3, 0.9, 1.0]
    ks = [0, 1, 5]
    t = torch.tensor([temps[i % 4] for i in range(S)])
    p = torch.tensor([tops[i % 3] for i in range(S)])
    k = torch.tensor([ks[(i // 3) % 3] for i in range(S)], dtype=torch.int32)
    seeds = torch.arange(S, dtype=torch.int64) + 1000
    out = run(logits, t, p, k, seeds=seeds).cpu().numpy()
    ref_logits = logits.float().cpu().numpy()
    for r in range(S):
        kept = ref_kept(
            ref_logits[r], float(t[r]), min(1.0, float(p[r]) + NUCLEUS_MASS_TOL), int(k[r])
        )
        assert 0 <= out[r] < V and kept[out[r]], (
            f"row {r}: token {out[r]} outside reference set (T={t[r]}, p={p[r]}, k={k[r]})"
        )


def _frequencies(device, logits_row, temperature, top_p, top_k):
    V = logits_row.shape[0]
    logits = torch.tensor(logits_row, dtype=torch.float32).expand(NUM_DRAWS, V).contiguous()
    out = (
        run(logits.to(device), temperature, top_p, top_k, seeds=7, offsets=torch.arange(NUM_DRAWS))
        .cpu()
        .numpy()
    )
    return np.bincount(out, minlength=V) / NUM_DRAWS


@pytest.mark.parametrize(
    "temperature,top_p,top_k",
    [(1.0, 1.0, 0), (0.7, 0.8, 0), (1.0, 1.0, 3), (1.3, 0.6, 4), (1.0, 0.95, 0)],
)
def test_distribution_matches_renormalised_reference(device, temperature, top_p, top_k):
    # Logits chosen so no token sits within NUCLEUS_MASS_TOL of a top-p boundary.
    row = np.array(
        [2.0, 1.5, 1.2, 1.0, 0.4, 0.0, -0.5, -1.0, -2.0, -3.0, 0.9, 0.1, -0.2, 0.3, -4.0, 1.1, 0.6],
        dtype=np.float32,
    )
    freq = _frequencies(device, row, temperature, top_p, top_k)
    ref = ref_probs(row, temperature, top_p, top_k)
    assert np.all(freq[ref == 0] == 0), "drew a token outside the kept set"
    tv = 0.5 * np.abs(freq - ref).sum()
    assert tv < TV_TOL, (
        f"TV distance {tv:.4f} >= {TV_TOL}\nfreq={freq.round(3)}\nref={ref.round(3)}"
    )


def test_distribution_check_can_fail(device):
    # The same check rejects a wrong temperature: guards against a vacuous test.
    row = np.linspace(2, -2, 12).astype(np.float32)
    freq = _frequencies(device, row, 1.0, 1.0, 0)
    tv = 0.5 * np.abs(freq - ref_probs(row, 0.5, 1.0, 0)).sum()
    assert tv > TV_TOL


def test_temperature_zero_and_top_k_one_are_argmax(device):
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(33, 257, generator=g).to(device)
    expect = logits.argmax(dim=1).cpu()
    assert torch.equal(run(logits, 0.0, 0.9, 0).cpu(), expect)
    assert torch.equal(run(logits, 1.0, 1.0, 1, seeds=torch.arange(33)).cpu(), expect)
    assert torch.equal(run(logits, 0.5, 1e-6, 0, seeds=torch.arange(33)).cpu(), expect)


def test_ties_at_threshold_are_kept(device):
    row = torch.tensor([[3.0, 3.0, 3.0, 0.0, -1.0]] * 600, device=device)
    out = run(row, 1.0, 0.1, 0, offsets=torch.arange(600)).cpu().numpy()
    assert set(out.tolist()) == {0, 1, 2}  # top_p 0.1 is reached by any one of the tied tokens
    out = run(row, 1.0, 1.0, 2, offsets=torch.arange(600)).cpu().numpy()
    assert set(out.tolist()) == {0, 1, 2}  # the 2nd highest value is tied: all ties kept


def test_same_seed_offset_reproduces_different_offsets_differ(device):
    logits = torch.zeros(256, 1000, device=device)  # uniform: draws differ unless keyed alike
    a = run(logits, 1.0, 1.0, 0, seeds=5, offsets=9)
    b = run(logits, 1.0, 1.0, 0, seeds=5, offsets=9)
    assert torch.equal(a, b) and len(set(a.tolist())) == 1  # same (seed, offset) in every row
    c = run(logits, 1.0, 1.0, 0, seeds=5, offsets=torch.arange(256))
    assert len(set(c.tolist())) > 200
    d = run(logits, 1.0, 1.0, 0, seeds=torch.arange(256), offsets=9)
    assert len(set(d.tolist())) > 200


@pytest.mark.parametrize("as_tensor", [False, True])
def test_padded_rows_write_minus_one(device, as_tensor):
    logits = torch.randn(7, 50, device=device)
    for n in (0, 3, 7):
        nv = torch.tensor([n], dtype=torch.int32, device=device) if as_tensor else n
        out = run(logits, 1.0, 0.9, 0, num_valid=nv).cpu()
        assert (out[n:] == -1).all() and ((out[:n] >= 0) & (out[:n] < 50)).all()


def test_padded_rows_read_nothing(device):
    logits = torch.randn(4, 20, device=device)
    logits[2:] = float("nan")  # garbage in padding rows: must not count as errors
    err = new_error_counter(device)
    out = run(logits, 1.0, 0.9, 0, num_valid=2, error_counter=err)
    assert err.tolist() == [0, INT32_MAX] and out[2:].tolist() == [-1, -1]


def test_nan_and_all_neg_inf_rows_stay_in_range_and_are_counted(device):
    logits = torch.randn(5, 64, device=device)
    logits[1, 10] = float("nan")
    logits[3] = float("-inf")
    logits[4] = float("nan")
    err = new_error_counter(device)
    out = run(logits, 1.0, 0.9, 5, error_counter=err).cpu()
    assert ((out >= 0) & (out < 64)).all()
    assert err.tolist() == [3, 1]


def test_out_buffer_and_int32_output(device):
    logits = torch.randn(3, 40, device=device)
    out = torch.full((3,), 99, dtype=torch.int32, device=device)
    res = run(logits, 0.0, 1.0, 0, out=out)
    assert res is out and torch.equal(out.long().cpu(), logits.argmax(1).cpu())


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(logits=torch.zeros(3)), "logits must be 2-D"),
        (dict(logits=torch.zeros(3, 4, dtype=torch.int32)), "logits dtype"),
        (dict(temperature=torch.ones(2)), r"temperature must have shape \[3\]"),
        (dict(top_p=torch.ones(3, dtype=torch.float64)), "top_p must be one of"),
        (dict(seeds=torch.zeros(3, dtype=torch.int32)), "seeds must be one of"),
        (dict(top_p=torch.tensor([1.0, 0.0, 1.0])), r"top_p\[1\] = 0.0 is out of range"),
        (dict(temperature=torch.tensor([1.0, 1.0, -2.0])), r"temperature\[2\]"),
        (dict(top_k=torch.tensor([0, -1, 0], dtype=torch.int32)), r"top_k\[1\]"),
        (dict(num_valid=4), "num_valid = 4"),
        (dict(num_valid=torch.tensor([1], dtype=torch.int64)), "num_valid tensor"),
        (dict(error_counter=torch.zeros(2, dtype=torch.int64)), "error_counter"),
    ],
)
def test_launcher_rejects_bad_arguments(change, match):
    args = dict(
        logits=torch.zeros(3, 4),
        temperature=torch.ones(3),
        top_p=torch.ones(3),
        top_k=torch.zeros(3, dtype=torch.int32),
        seeds=torch.zeros(3, dtype=torch.int64),
        offsets=torch.zeros(3, dtype=torch.int64),
        num_valid=3,
        error_counter=None,
    )
    args.update(change)
    with pytest.raises(ValueError, match=match):
        top_p_sample(**args)


def test_paddle_tensors():
    paddle = pytest.importorskip("paddle")
    logits = paddle.to_tensor(np.random.default_rng(0).normal(size=(4, 30)).astype("float32"))
    f = lambda v, dt: paddle.to_tensor(np.full(4, v, dtype=dt))  # noqa: E731
    out = top_p_sample(
        logits,
        f(0.0, "float32"),
        f(1.0, "float32"),
        f(0, "int32"),
        f(0, "int64"),
        f(0, "int64"),
        paddle.to_tensor(np.array([3], "int32")),
    )
    assert isinstance(out, paddle.Tensor)
    assert out.numpy().tolist() == logits.numpy()[:3].argmax(1).tolist() + [-1]


@pytest.mark.gpu
def test_int64_row_offsets_beyond_2_31():
    # rows x vocab > 2^31: row offsets must be computed in int64
    S, V = 16400, 131072
    logits = torch.full((S, V), -1.0, device="cuda")
    logits[-1, V - 3] = 10.0
    out = run(logits, 0.0, 1.0, 0)
    assert out[-1].item() == V - 3
