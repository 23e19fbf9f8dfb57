"""The native sampler: deterministic rows exactly as Triton's, draws against NumPy.

Greedy, bad (NaN / no finite logit) and padded rows must match the Triton kernel exactly.
Sampled rows draw from a hash of (seed, offset, token), not Triton's Philox stream, so
they are checked against a NumPy reference of the rule: every draw inside the kept set,
and the empirical distribution close to the renormalised kept distribution.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from graphbatch.kernels import new_error_counter, top_p_sample

from .native_paths import ENV, INT32_MAX, both, sampler_args

SWITCHES_CPU_KERNELS = True  # conftest: this module picks the path itself
LOGPROB_ATOL = 1e-5
NUCLEUS_MASS_TOL = 1e-4  # fp32 mass sums vs the fp64 reference: a boundary token may flip
MIN_P_TOL = 1e-5
NUM_DRAWS = 16384  # per distribution case; the 0.999 null quantile of TV is ~0.03 at V = 50
TV_TOL = 0.05


def run_sampler(logits, temperature, top_p, top_k, seeds, offsets, min_p, num_valid):
    S, dev = logits.shape[0], logits.device
    out = torch.full((S,), 99, dtype=torch.int64, device=dev)  # every row must be written
    lp = torch.full((S,), 5.0, device=dev)
    err = new_error_counter(dev)
    top_p_sample(
        logits, temperature, top_p, top_k, seeds, offsets, num_valid, out=out,
        error_counter=err, min_p=min_p, logprobs=lp,
    )  # fmt: skip
    return out, lp, err


def ref_kept(x: np.ndarray, temperature, top_p, top_k, min_p=0.0) -> np.ndarray:
    """The rule, in fp64: top-k (ties kept), renormalise, the smallest top-p nucleus
    (crossing value and ties kept), then min_p against the max probability."""
    x = x.astype(np.float64)
    z = x / temperature
    keep = z > -np.inf
    zs = np.sort(z)[::-1]
    if 0 < top_k < z.size:
        keep &= z >= zs[top_k - 1]
    if top_p < 1:
        mass = np.sort(np.where(keep, np.exp(z - z.max()), 0.0))[::-1]
        cut = min(int(np.searchsorted(np.cumsum(mass) / mass.sum(), top_p)), z.size - 1)
        keep &= z >= zs[cut]
    if min_p > 0:
        keep &= z - z.max() >= np.log(min_p)
    return keep


def ref_probs(x: np.ndarray, temperature, top_p, top_k, min_p=0.0) -> np.ndarray:
    z = x.astype(np.float64) / temperature
    p = np.where(ref_kept(x, temperature, top_p, top_k, min_p), np.exp(z - z.max()), 0.0)
    return p / p.sum()


def log_softmax_at(x: np.ndarray, token: int) -> float:
    x = x.astype(np.float64)
    return float(x[token] - x.max() - np.log(np.exp(x - x.max()).sum()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("nv_tensor", [False, True])
def test_sampler_greedy_bad_and_padded_rows_match_triton(monkeypatch, device, dtype, nv_tensor):
    S, V, inf, nan = 12, 37, float("inf"), float("nan")
    logits = torch.randn(S, V, generator=torch.Generator().manual_seed(4)) * 2
    logits[4, [3, 9]] = 9.0  # a tied max: the first index wins
    logits[5, 11] = logits[9, 0] = nan
    logits[6] = -inf
    logits[7, [20, 8]] = inf
    logits[10:] = nan  # padding rows: never read, never counted
    temps = [0, 0, 0, 0, 0, 1.0, 0.7, 1.0, 1.3, 0, 1, 1]
    top_k = [0, 5, 1, 40, 0, 0, 3, 0, 1, 0, 0, 0]  # row 8: top-k 1 samples the argmax
    args = (
        logits.to(dtype), torch.tensor(temps), torch.full((S,), 0.8), torch.tensor(top_k).int(),
        torch.arange(S), torch.zeros(S, dtype=torch.int64), torch.full((S,), 0.1),
        torch.tensor([10], dtype=torch.int32) if nv_tensor else 10,
    )  # fmt: skip
    (nat, nlp, nerr), (tri, tlp, terr) = both(monkeypatch, device, run_sampler, *args)
    assert torch.equal(nat, tri), (nat, tri)
    assert nerr.tolist() == terr.tolist() == [4, 5]  # rows 5, 6, 7, 9
    torch.testing.assert_close(nlp, tlp, atol=LOGPROB_ATOL, rtol=0, equal_nan=True)
    x = logits.to(dtype).float().numpy()
    good = [0, 1, 2, 3, 4, 8]
    assert nat[good].tolist() == [int(np.argmax(x[r])) for r in good]
    assert nat[7] == 8 and nat[10:].tolist() == [-1, -1]
    assert torch.isnan(nlp[[5, 6, 7, 9, 10, 11]]).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("V", [7, 50, 300])
def test_native_samples_inside_reference_set(monkeypatch, dtype, V):
    monkeypatch.setenv(ENV, "native")
    grid = [
        (t, p, k, m) for t in (0.3, 1.0, 2.0) for p in (1e-6, 0.3, 0.9, 1.0)
        for k in (0, 1, 5, V - 1, V + 1) for m in (0.0, 0.05, 0.5)
    ] * 4  # fmt: skip
    cols = [torch.tensor(c) for c in zip(*grid, strict=True)]
    logits = (torch.randn(len(grid), V, generator=torch.Generator().manual_seed(V)) * 3).to(dtype)
    out, lp, err = run_sampler(
        logits, cols[0].float(), cols[1].float(), cols[2].int(), torch.arange(len(grid)),
        torch.arange(len(grid)) // 4, cols[3].float(), len(grid),
    )  # fmt: skip
    x = logits.float().numpy()
    for r, (t, p, k, m) in enumerate(grid):
        kept = ref_kept(x[r], t, min(1.0, p + NUCLEUS_MASS_TOL), k, max(0.0, m - MIN_P_TOL))
        assert kept[out[r]], f"row {r}: token {out[r]} outside the set (T={t} p={p} k={k} m={m})"
        assert abs(lp[r] - log_softmax_at(x[r], out[r])) < LOGPROB_ATOL
    assert err.tolist() == [0, INT32_MAX]


def test_native_nucleus_wider_than_the_sorted_prefix(monkeypatch):
    # A flat row: the top-p 0.9 nucleus holds ~3700 of 4096 tokens, far past the values
    # the native sampler sorts first; it must sort the rest, not cut the nucleus short.
    monkeypatch.setenv(ENV, "native")
    S, V = 2000, 4096
    row = -torch.arange(V, dtype=torch.float32) * 1e-5
    logits = row.expand(S, V).contiguous()
    out = top_p_sample(*sampler_args(logits, 1.0, 0.9, 0, 3, torch.arange(S)), S).numpy()
    kept = ref_kept(row.numpy(), 1.0, 0.9 + NUCLEUS_MASS_TOL, 0)
    assert kept[out].all() and out.max() > 3000


DIST_V = 50
DIST_CASES = [  # (temperature, top_p, top_k, min_p)
    (1.0, 1.0, 0, 0.0),
    (0.5, 1.0, 0, 0.0),
    (2.0, 1.0, 0, 0.0),
    (1.0, 1.0, 5, 0.0),
    (1.0, 0.7, 0, 0.0),
    (1.0, 1.0, 0, 0.1),
    (1.5, 0.8, 10, 0.0),
    (0.8, 0.9, 20, 0.05),
]


def dist_row() -> np.ndarray:
    return (np.random.default_rng(11).normal(size=DIST_V) * 1.5).astype(np.float32)


def native_frequencies(cases: list[tuple]) -> list[np.ndarray]:
    """NUM_DRAWS native draws per case: one launch, every row its own offset."""
    n = NUM_DRAWS
    cols = [torch.tensor(c).repeat_interleave(n) for c in zip(*cases, strict=True)]
    S = n * len(cases)
    out, _, _ = run_sampler(
        torch.from_numpy(dist_row()).expand(S, DIST_V).contiguous(), cols[0].float(),
        cols[1].float(), cols[2].int(), torch.full((S,), 7), torch.arange(S), cols[3].float(), S,
    )  # fmt: skip
    return [np.bincount(out[i * n : (i + 1) * n], minlength=DIST_V) / n for i in range(len(cases))]


def test_native_distribution_matches_reference(monkeypatch):
    monkeypatch.setenv(ENV, "native")
    row = dist_row()
    for case, freq in zip(DIST_CASES, native_frequencies(DIST_CASES), strict=True):
        t, p, k, m = case
        ref = ref_probs(row, *case)
        # the data has no token within reach of a boundary: the kept set is unambiguous
        assert np.array_equal(ref > 0, ref_kept(row, t, min(1.0, p + 1e-3), k, m))
        assert np.all(freq[ref == 0] == 0), f"{case}: drew a token outside the kept set"
        tv = 0.5 * np.abs(freq - ref).sum()
        assert tv < TV_TOL, f"{case}: TV {tv:.4f}\n{freq}\n{ref}"


def test_distribution_check_catches_a_wrong_temperature(monkeypatch):
    monkeypatch.setenv(ENV, "native")
    (freq,) = native_frequencies([(1.0, 1.0, 0, 0.0)])
    assert 0.5 * np.abs(freq - ref_probs(dist_row(), 0.7, 1.0, 0)).sum() > TV_TOL


def test_native_draws_keyed_on_seed_and_offset(monkeypatch):
    monkeypatch.setenv(ENV, "native")
    logits = torch.zeros(256, 1000)  # uniform: two draws agree only if keyed alike

    def draw(seeds, offsets):
        return top_p_sample(*sampler_args(logits, 1.0, 1.0, 0, seeds, offsets), 256)

    a, b = draw(5, 9), draw(5, 9)
    assert torch.equal(a, b) and len(set(a.tolist())) == 1  # same key in every row
    assert len(set(draw(5, torch.arange(256)).tolist())) > 200
    c = draw(torch.arange(256), 9)
    assert len(set(c.tolist())) > 200
    assert torch.equal(c, draw(torch.arange(256), 9))
    assert (c != draw(torch.arange(256), 10)).sum() > 240  # a new offset: fresh draws
