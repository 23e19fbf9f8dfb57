"""gather_slots / scatter_slots vs torch index_select / index_copy_, one run.

Prints time and the fraction of copy bandwidth (bytes moved / copy-bandwidth time).
GPU only:  python benchmarks/bench_gather.py
"""

from __future__ import annotations

import torch
from graphbatch.kernels import gather_slots, new_error_counter, scatter_slots


def main() -> None:
    import triton

    if not torch.cuda.is_available():
        raise SystemExit("bench_gather needs a CUDA GPU")
    a = torch.empty(1 << 28, dtype=torch.float32, device="cuda")
    b = torch.empty_like(a)
    bw = 2 * a.numel() * 4 / (triton.testing.do_bench(lambda: b.copy_(a)) * 1e-3)
    print(f"copy bandwidth {bw / 1e12:.2f} TB/s on {torch.cuda.get_device_name()}")
    print(
        f"{'row bytes':>9} {'T':>6} {'gather ms':>9} {'index_select':>12} {'gather %bw':>10} "
        f"{'scatter ms':>10} {'index_copy_':>11} {'scatter %bw':>11}"
    )
    N = 1 << 16
    err = new_error_counter("cuda")
    for D in (64, 256, 1024, 4096):  # fp16 rows: 128 B .. 8 KiB
        for T in (1024, 8192):
            table = torch.randn(N, D, dtype=torch.float16, device="cuda")
            idx = torch.randint(0, N, (T,), device="cuda")
            uniq = torch.randperm(N, device="cuda")[:T]
            out = torch.empty(T, D, dtype=torch.float16, device="cuda")
            vals = torch.randn(T, D, dtype=torch.float16, device="cuda")
            g = triton.testing.do_bench(
                lambda: gather_slots(table, idx, out=out, error_counter=err)
            )
            gi = triton.testing.do_bench(lambda: torch.index_select(table, 0, idx, out=out))
            s = triton.testing.do_bench(lambda: scatter_slots(table, uniq, vals, error_counter=err))
            si = triton.testing.do_bench(lambda: table.index_copy_(0, uniq, vals))
            moved = 2 * T * D * 2
            ideal = moved / bw * 1e3
            print(
                f"{D * 2:>9} {T:>6} {g:>9.4f} {gi:>12.4f} {100 * ideal / g:>9.1f}% "
                f"{s:>10.4f} {si:>11.4f} {100 * ideal / s:>10.1f}%",
                flush=True,
            )


if __name__ == "__main__":
    main()
