"""Native CPU kernels for paddle tensors: the paddle-ops path (``kernels/native_paddle``)
vs the torch path (``kernels/native``) fed DLPack views of the same paddle tensors.

Real shapes of a SmolLM2-135M prefill step (fp32, hidden 576, H=9, HKV=3, D=64, vocab
49152): T = 512 tokens in 4 sequences of 128, KV blocks of 16. Each case runs in rounds,
the two paths alternating (a block of calls of one, a pause, a block of the other, the
order flipped every round) so machine noise hits both alike; the pause lets the other
OpenMP runtime's idle threads stop spinning. Times are medians over every call.

Columns: paddle ms, torch ms (views made once: the kernel alone), ratio paddle / torch,
and ratio paddle / (torch + the DLPack export of every argument, as a launcher does per
call today); the ratio of the fastest calls (less sensitive to other load on the machine).
``same``: the two paths' outputs agree (tokens equal, floats within 1e-5).

    python benchmarks/bench_native_paddle.py [--rounds 15] [--calls 2] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import paddle
from graphbatch.kernels import native_paddle as pn
from paddle.base import core as paddle_core

PAUSE_S = 0.1
H, HKV, D, HIDDEN, VOCAB, LAYERS = 9, 3, 64, 576, 49152, 30
SEQS, ROWS, BLOCK = 4, 128, 16  # T = 512
INT32_MAX = 2**31 - 1


def _err() -> paddle.Tensor:
    return paddle.to_tensor([0, INT32_MAX], dtype="int32")


def _pt(a: np.ndarray) -> paddle.Tensor:
    return paddle.to_tensor(np.ascontiguousarray(a))


def cases(rng: np.random.Generator) -> list[tuple[str, Callable, Callable, list, list]]:
    """(name, paddle call, torch call, paddle outputs, torch outputs): each call takes a
    converter ``tv`` (paddle tensor -> torch view) for its arguments."""
    import torch  # noqa: F401  (the torch path needs it; the paddle path does not)
    from graphbatch.kernels import native as tn

    out = []
    T = SEQS * ROWS

    def slots(name, table, idx, rows):
        o_p, o_t = paddle.zeros([rows, *table.shape[1:]]), paddle.zeros([rows, *table.shape[1:]])
        e_p, e_t = _err(), _err()

        def run_p(tv):
            pn.gather_slots(table, idx, o_p, e_p)

        def run_t(tv):  # the tables are [N, D] already: the launcher's row view
            tn.gather_slots(tv(table), tv(idx), tv(o_t), tv(e_t))

        out.append((name, run_p, run_t, [o_p], [o_t]))

    embed = _pt(rng.standard_normal((VOCAB, HIDDEN)).astype(np.float32))
    slots("gather embed [49152,576] T=512", embed, _pt(rng.integers(0, VOCAB, T)), T)
    rope = _pt(rng.standard_normal((8192, D)).astype(np.float32))
    positions = np.concatenate([np.arange(ROWS)] * SEQS)
    slots("gather rope [8192,64] T=512", rope, _pt(positions), T)
    hidden = _pt(rng.standard_normal((T, HIDDEN)).astype(np.float32))
    last = _pt((np.arange(SEQS) + 1) * ROWS - 1)
    slots("gather last [512,576] T=4", hidden, last, SEQS)

    num_blocks = 2048
    cache_p = paddle.zeros([num_blocks * BLOCK, HKV, D])
    cache_t = paddle.zeros([num_blocks * BLOCK, HKV, D])
    slot_map = _pt(rng.permutation(num_blocks * BLOCK)[:T])
    kv = _pt(rng.standard_normal((T, HKV, D)).astype(np.float32))
    e_p, e_t = _err(), _err()
    out.append((
        "scatter kv [32768,3,64] T=512",
        lambda tv: pn.scatter_slots(cache_p, slot_map, kv, e_p),
        lambda tv: tn.scatter_slots(
            tv(cache_t).view(num_blocks * BLOCK, -1), tv(slot_map), tv(kv).view(T, -1), tv(e_t)
        ),
        [cache_p],
        [cache_t],
    ))  # fmt: skip

    kc = _pt(rng.standard_normal((num_blocks * BLOCK, HKV, D)).astype(np.float32))
    vc = _pt(rng.standard_normal((num_blocks * BLOCK, HKV, D)).astype(np.float32))
    q = _pt(rng.standard_normal((T, H, D)).astype(np.float32))
    qsl = _pt((np.arange(SEQS + 1) * ROWS).astype(np.int32))
    for context in (0, 384):
        L = context + ROWS
        mb = -(-L // BLOCK)
        bt = _pt(rng.permutation(num_blocks)[: SEQS * mb].reshape(SEQS, mb).astype(np.int32))
        sl = _pt(np.full(SEQS, L, np.int32))
        pos = _pt(np.concatenate([np.arange(ROWS) + context] * SEQS).astype(np.int64))
        args = (q, kc, vc, bt, qsl, sl, pos)
        o_p, o_t, e_p, e_t = paddle.zeros([T, H, D]), paddle.zeros([T, H, D]), _err(), _err()
        out.append((
            f"attention 4x128 rows, {context} context",
            lambda tv, a=args, o=o_p, e=e_p: pn.paged_attention(*a, BLOCK, 0.125, o, e),
            lambda tv, a=args, o=o_t, e=e_t: tn.paged_attention(
                *map(tv, a), BLOCK, 0.125, tv(o), tv(e)
            ),
            [o_p],
            [o_t],
        ))  # fmt: skip

    for S, top_k, top_p in ((8, 50, 0.9), (64, 50, 0.9), (64, 0, 0.9)):
        logits = _pt((rng.standard_normal((S, VOCAB)) * 3).astype(np.float32))
        params = {
            "temperature": paddle.full([S], 0.8),
            "top_p": paddle.full([S], top_p),
            "top_k": paddle.full([S], top_k, dtype="int32"),
            "seeds": _pt(rng.integers(0, 2**62, S)),
            "offsets": _pt(rng.integers(0, 2**40, S)),
        }
        o_p, o_t = paddle.zeros([S], "int64"), paddle.zeros([S], "int64")
        l_p, l_t = paddle.zeros([S]), paddle.zeros([S])
        e_p, e_t = _err(), _err()
        out.append((
            f"sample S={S} top_k={top_k} top_p={top_p}",
            lambda tv, a=(logits, params, o_p, l_p, e_p): pn.top_p_sample(
                a[0], a[1], S, a[2], a[3], a[4]
            ),
            lambda tv, a=(logits, params, o_t, l_t, e_t): tn.top_p_sample(
                tv(a[0]), {k: tv(v) for k, v in a[1].items()}, S, tv(a[2]), tv(a[3]), tv(a[4])
            ),
            [o_p, l_p],
            [o_t, l_t],
        ))  # fmt: skip

    step = _pt(np.array([7], np.int64))
    f_p, f_t = paddle.zeros([LAYERS], "int64"), paddle.zeros([LAYERS], "int64")
    out.append((
        "layer_signal [30]",
        lambda tv: pn.layer_signal(step, f_p, 11),
        lambda tv: tv(f_t).narrow(0, 11, 1).copy_(tv(step)),
        [f_p],
        [f_t],
    ))  # fmt: skip
    return out


def _time(fn: Callable, tv: Callable, calls: int) -> list[float]:
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn(tv)
        times.append(time.perf_counter() - t0)
    return times


def _same(a: list[paddle.Tensor], b: list[paddle.Tensor]) -> bool:
    for x, y in zip(a, b, strict=True):
        if x.dtype in (paddle.int64, paddle.int32):
            if not bool((x == y).all()):
                return False
        elif not np.allclose(x.numpy(), y.numpy(), atol=1e-5, equal_nan=True):
            return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--calls", type=int, default=2, help="calls per path per round")
    ap.add_argument("--threads", type=int, default=0, help="0: torch's default, for both")
    args = ap.parse_args()
    try:
        import torch
    except ImportError as e:
        raise SystemExit("bench_native_paddle compares with the torch path: install torch") from e
    if args.threads:
        torch.set_num_threads(args.threads)
    paddle_core.set_num_threads(torch.get_num_threads())
    print(
        f"threads: torch {torch.get_num_threads()}, paddle set to the same; "
        f"paddle {paddle.__version__}, torch {torch.__version__}"
    )

    def view(t: paddle.Tensor):  # what a launcher does per call today
        return torch.utils.dlpack.from_dlpack(t.__dlpack__())

    memo: dict[int, object] = {}

    def cached(t: paddle.Tensor):  # views made once: the torch kernel alone
        key = id(t)
        if key not in memo:
            memo[key] = (t, view(t))
        return memo[key][1]

    rng = np.random.default_rng(0)
    print(
        f"{'case':<38} {'paddle ms':>9} {'torch ms':>9} {'pd/torch':>8} "
        f"{'pd/(torch+dlpack)':>17} {'min pd/torch':>12} {'same':>5}"
    )
    for name, run_p, run_t, outs_p, outs_t in cases(rng):
        for fn, tv in ((run_p, cached), (run_t, cached), (run_t, view)):
            fn(tv)  # warm-up (first-call allocations)
        same = _same(outs_p, outs_t)
        tp, tt, td = [], [], []
        for r in range(args.rounds):
            order = [(run_p, cached, tp), (run_t, cached, tt), (run_t, view, td)]
            for fn, tv, acc in order if r % 2 == 0 else order[::-1]:
                time.sleep(PAUSE_S)
                acc += _time(fn, tv, args.calls)
        mp, mt, md = (statistics.median(x) * 1e3 for x in (tp, tt, td))
        print(
            f"{name:<38} {mp:>9.3f} {mt:>9.3f} {mp / mt:>8.2f} {mp / md:>17.2f} "
            f"{min(tp) / min(tt):>12.2f} {'yes' if same else 'NO':>5}",
            flush=True,
        )


if __name__ == "__main__":
    main()
