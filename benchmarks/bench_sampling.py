"""top_p_sample vs a sort-based PyTorch top-p (and FlashInfer if installed), one run.

Prints, per (B, V): time of each, our speed-up over the sort baseline, and the
fraction of the one-read bandwidth floor (4*B*V bytes at the measured copy bandwidth).
GPU only:  python benchmarks/bench_sampling.py [--top-p 0.9]
"""

from __future__ import annotations

import argparse

import torch
from graphbatch.kernels import top_p_sample


def sort_top_p(logits, temperature, top_p, generator=None):
    probs = torch.softmax(logits / temperature[:, None], dim=-1)
    sorted_p, order = probs.sort(dim=-1, descending=True)
    csum = sorted_p.cumsum(dim=-1)
    drop = (csum - sorted_p) >= top_p[:, None]
    sorted_p = sorted_p.masked_fill(drop, 0.0)
    pick = torch.multinomial(sorted_p, 1, generator=generator)
    return order.gather(1, pick).squeeze(1)


def copy_bandwidth(nbytes: int) -> float:
    import triton

    a = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda")
    b = torch.empty_like(a)
    ms = triton.testing.do_bench(lambda: b.copy_(a))
    return 2 * nbytes / (ms * 1e-3)  # read + write


def main() -> None:
    import triton

    ap = argparse.ArgumentParser()
    ap.add_argument("--top-p", type=float, default=0.9)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_sampling needs a CUDA GPU")
    try:
        import flashinfer.sampling as fi
    except ImportError:
        fi = None
    bw = copy_bandwidth(1 << 30)
    print(
        f"copy bandwidth: {bw / 1e12:.2f} TB/s; top_p={args.top_p}; device "
        f"{torch.cuda.get_device_name()}"
    )
    print(
        f"{'B':>4} {'V':>7} {'ours ms':>8} {'sort ms':>8} {'speedup':>8} {'floor ms':>8} "
        f"{'floor/ours':>10}" + (f" {'flashinfer ms':>13}" if fi else "")
    )
    for V in (32000, 131072, 152064):
        for B in (1, 8, 64, 128, 512):
            logits = torch.randn(B, V, device="cuda") * 3
            t = torch.ones(B, device="cuda")
            p = torch.full((B,), args.top_p, device="cuda")
            k = torch.zeros(B, dtype=torch.int32, device="cuda")
            seeds = torch.arange(B, dtype=torch.int64, device="cuda")
            offs = torch.zeros(B, dtype=torch.int64, device="cuda")
            out = torch.empty(B, dtype=torch.int64, device="cuda")
            ours = triton.testing.do_bench(
                lambda: top_p_sample(logits, t, p, k, seeds, offs, B, out=out, check_values=False)
            )
            base = triton.testing.do_bench(lambda: sort_top_p(logits, t, p))
            floor = 4 * B * V / bw * 1e3
            line = (
                f"{B:>4} {V:>7} {ours:>8.3f} {base:>8.3f} {base / ours:>7.2f}x "
                f"{floor:>8.4f} {floor / ours:>10.3f}"
            )
            if fi:
                probs = torch.softmax(logits, -1)
                fms = triton.testing.do_bench(lambda: fi.top_p_sampling_from_probs(probs, p))
                line += f" {fms:>13.3f}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
