"""Paper cost of the Triton prefill attention on an H100, without a GPU: today's kernel vs v1.

The launch the executor makes (``models/layers.py``: an error counter, the launcher's own
tile choice) is recorded at each shape below, compiled by Triton's real compiler for
sm_90 (``triton.compile``, as ``tests/kernels/gpu_compile.py`` does; also for sm_80, for
the spill and shared-memory check) and disassembled with the ``cuobjdump`` bundled in
Triton. Every innermost loop (a backward branch whose range holds no other loop) that
holds a matrix instruction (HMMA / HGMMA) or FFMA is a key-tile loop. Its body gives per
iteration: warp instructions issued, shared-memory bytes moved, matrix flops.

Iterations are counted exactly on the host, from the kernel's own tiling: which query
tiles exist, each tile's rows and their kv_len, and (new kernel) how many of its key
tiles run unmasked and how many masked. Useful flops = 4 x D x H x sum of kv_len (QK^T
and PV of every (row, key) pair the causal mask keeps).

Model (H100 SXM; assumptions, not measurements):
- 132 SMs at 1.83 GHz; 4 schedulers per SM, one warp instruction each per clock: every
  SASS instruction costs one issue slot (an HGMMA too; its own time is the tensor term).
- Shared memory 128 B/clock per SM. Counted per warp instruction: LDS/STS/LDSM by their
  width (.128 = 512 B, .64 = 256 B, 32-bit = 128 B; LDSM .x4 = 512 B, .x2 = 256 B,
  .x1 = 128 B), LDGSTS (cp.async) by its width (the write into shared memory), and each
  HGMMA's shared operands, once per warpgroup (B: N x K x 2 B; A too when it is a
  descriptor and not registers).
- Tensor: wgmma (HGMMA) peak 989 TF dense bf16/fp16 (4096 flop/clock/SM); mma.sync
  (HMMA) 2/3 of that, 660 TF (what microbenchmarks of mma.sync on Hopper report). An
  fp32 ("ieee") dot runs on FFMA: its cost is in the issue term, no tensor term.
- An iteration costs max(issue, shared, tensor) clocks of its SM: the three overlap
  perfectly; memory latency, the global-memory/L2 path, load imbalance across SMs, the
  tail wave and the work outside the key loops (prologue, epilogue) are not counted.
  Ceiling of a term = useful flops / (its clocks summed over all iterations / 132 SMs).
- Estimate = useful flops / (sum of each iteration's max / 132 SMs): an upper bound.

A GPU run is what confirms it (docs/gpu-notes.md, "Attention cost model").

    TRITON_INTERPRET=0 .venv/bin/python benchmarks/attention_cost.py [--json out.json]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from _sass import innermost_loop_bodies  # noqa: E402  (a sibling script module)

ROOT = Path(__file__).resolve().parents[1]
SMS = 132
SCHEDULERS = 4
CLOCK_HZ = 1.83e9
SHARED_BPC = 128  # shared-memory bytes per clock per SM
WGMMA_FPC = 4096  # dense bf16/fp16 flop per clock per SM: 989 TF at 1.83 GHz
HMMA_FPC = WGMMA_FPC * 2 / 3  # mma.sync: 660 TF
GOAL_TF = 450
VERSIONS = {
    "v1": ("benchmarks/_attention_v1.py", "_attention_v1"),
    "new": ("kernels/paged_attention.py", "graphbatch.kernels.paged_attention"),
}


@dataclass(frozen=True)
class Shape:
    name: str
    H: int
    HKV: int
    D: int
    dtype: str
    seqs: tuple[tuple[int, int], ...]  # (context tokens, new tokens) per sequence
    block_size: int = 16


PROD = tuple([(0, 4096)] * 8)  # 8 x 4096 tokens, fresh causal prefill
SHAPES = [
    Shape("Llama-3.1-8B bf16 8x4096", 32, 8, 128, "bfloat16", PROD),
    Shape("SmolLM2-135M bf16 8x4096", 9, 3, 64, "bfloat16", PROD),
    Shape("SmolLM2-135M fp32 8x4096", 9, 3, 64, "float32", PROD),
    Shape("Llama-3.1-8B bf16 64x16 after 2048", 32, 8, 128, "bfloat16", tuple([(2048, 16)] * 64)),
]


def _module(version: str):
    path, name = VERSIONS[version]
    if version == "v1":
        sys.path.insert(0, str(ROOT / "benchmarks"))
    return importlib.import_module(name)


def _args(shape: Shape):
    """The launcher's arguments (uninitialised: only recorded, never run)."""
    import torch

    bs = shape.block_size
    lens = [c + n for c, n in shape.seqs]
    S, T = len(lens), sum(n for _, n in shape.seqs)
    MB = max(-(-n // bs) for n in lens)
    blocks = S * MB
    dt = getattr(torch, shape.dtype)
    bt = torch.arange(blocks, dtype=torch.int32).view(S, MB)
    qsl = torch.tensor([0] + [sum(n for _, n in shape.seqs[: i + 1]) for i in range(S)])
    pos = torch.cat([torch.arange(c, c + n) for c, n in shape.seqs])
    return (
        torch.empty(T, shape.H, shape.D, dtype=dt),
        torch.empty(blocks * bs, shape.HKV, shape.D, dtype=dt),
        torch.empty(blocks * bs, shape.HKV, shape.D, dtype=dt),
        bt, qsl.int(), torch.tensor(lens, dtype=torch.int32), pos.long(), bs, shape.D**-0.5,
    )  # fmt: skip


def record(version: str, shape: Shape):
    """(fn, args, kwargs) of the launch the launcher makes."""
    from triton.runtime.jit import JITFunction

    mod = _module(version)
    seen = []

    def rec(self, *args, grid, warmup, **kwargs):
        seen.append((self, args, kwargs, grid))

    original = JITFunction.run
    JITFunction.run = rec
    try:
        mod.paged_attention(*_args(shape), error_counter=mod.rt.new_error_counter())
    finally:
        JITFunction.run = original
    return seen[0]


def compile_arch(fn, args, kwargs, arch: int) -> dict:
    import triton
    from triton.compiler import ASTSource

    sys.path.insert(0, str(ROOT / "tests" / "kernels"))
    import gpu_compile

    target, sig, constexprs, attrs, options = gpu_compile._specialise(fn, args, kwargs, arch)
    k = triton.compile(
        ASTSource(fn, sig, constexprs, attrs), target=target, options=options.__dict__
    )
    res = gpu_compile._resources(k.asm["cubin"])
    shared = max(res.get("SHARED", 0), k.metadata.shared)
    return {
        "cubin": k.asm["cubin"],
        "warps": options.num_warps,
        "stages": options.num_stages,
        "registers": res.get("REG", 0),
        "shared": shared,
        "spill": gpu_compile._spill_bytes(k.asm["ptx"], arch),
        "local": res.get("LOCAL", 0),
        "shared_ok": shared <= gpu_compile.SHARED_LIMIT[arch],
        "cuobjdump": gpu_compile._tool("cuobjdump"),
    }


# ---- the key-tile loops in sm_90 SASS ------------------------------------------------
_WIDTH = {"128": 512, "64": 256}
_HGMMA = re.compile(r"HGMMA\.(\d+)x(\d+)x(\d+)")


def _shared_bytes(op: str) -> int:
    name = op.split()[0] if op.split() else ""
    if name.startswith("@"):  # a predicated instruction: the opcode follows the guard
        name = op.split()[1]
    base = name.split(".")[0]
    parts = name.split(".")
    if base in ("LDS", "STS", "LDGSTS"):
        return next((_WIDTH[p] for p in parts if p in _WIDTH), 128)
    if base in ("LDSM", "STSM"):
        return 512 if ".4" in name or "x4" in name else 256 if ".2" in name else 128
    return 0


def _hgmma(op: str) -> tuple[int, int]:
    """(flops, shared bytes) of one warpgroup HGMMA."""
    m = _HGMMA.search(op)
    if not m:
        return 0, 0
    M, N, K = map(int, m.groups())
    operands = op.split(None, 1)[1] if " " in op else ""
    descs = operands.count("gdesc")
    b = N * K * 2 + (M * K * 2 if descs >= 2 else 0)
    return 2 * M * N * K, b


def sass_loops(cubin: bytes, cuobjdump: str, warps: int) -> list[dict]:
    """Innermost loops in address order with per-iteration, per-program figures."""
    groups = max(1, warps // 4)
    out = []
    for body in innermost_loop_bodies(cubin, cuobjdump):
        hmma = sum("HMMA" in op for op in body)
        hg = [_hgmma(op) for op in body if "HGMMA" in op]
        ffma = sum(re.search(r"\bFFMA\b", op) is not None for op in body)
        if not (hmma or hg or ffma):
            continue
        lds = sum(_shared_bytes(op) for op in body) * warps
        # HMMA.16816 = 4096 flop, HMMA.1688 = 2048 (per warp instruction)
        hmma_flops = sum(4096 if "16816" in op else 2048 for op in body if "HMMA" in op)
        out.append(
            {
                "instructions": len(body),
                "hmma": hmma,
                "hgmma": len(hg),
                "ffma": ffma,
                "bar": sum("BAR.SYNC" in op for op in body),
                "mufu": sum("MUFU" in op for op in body),
                "ldgsts": sum("LDGSTS" in op for op in body),
                "issue_clk": len(body) * warps / SCHEDULERS,
                "shared_bytes": lds + sum(b for _, b in hg) * groups,
                "mma_flops": hmma_flops * warps + sum(f for f, _ in hg) * groups,
            }
        )
    return out


# ---- iterations: the kernels' own tiling, on the host ---------------------------------
def iterations(version: str, shape: Shape, bm: int, bn: int) -> tuple[list[int], float]:
    """(iterations per hot loop summed over programs, useful flops)."""
    G = shape.H // shape.HKV
    useful = 0
    unmasked = masked = total = 0
    for c, n in shape.seqs:
        kv = list(range(c + 1, c + n + 1))  # kv_len per new token (fresh causal)
        useful += 4 * shape.D * shape.H * sum(kv)
        if version == "v1":  # BLOCK_M tokens per tile, one head per program, one loop
            for t0 in range(0, n, bm):
                total += -(-max(kv[t0 : t0 + bm]) // bn) * shape.H
        else:  # BLOCK_M (token, head) rows, one KV head per program, two loops
            for f0 in range(0, n * G, bm):
                rows = kv[f0 // G : -(-min(f0 + bm, n * G) // G)]
                lo = (min(rows) // bn) * bn
                unmasked += lo // bn * shape.HKV
                masked += -(-(max(rows) - lo) // bn) * shape.HKV
    return ([total] if version == "v1" else [unmasked, masked]), useful


def cost(version: str, shape: Shape) -> dict:
    fn, args, kwargs, _grid = record(version, shape)
    c90 = compile_arch(fn, args, kwargs, 90)
    c80 = compile_arch(fn, args, kwargs, 80)
    loops = sass_loops(c90["cubin"], c90["cuobjdump"], c90["warps"])
    bm, bn = kwargs["BLOCK_M"], kwargs["BLOCK_N"]
    iters, useful = iterations(version, shape, bm, bn)
    if len(loops) != len(iters):
        raise RuntimeError(f"{version} {shape.name}: {len(loops)} key loops, {len(iters)} counted")
    fpc = WGMMA_FPC if any(lp["hgmma"] for lp in loops) else HMMA_FPC
    clk = {"issue": 0.0, "shared": 0.0, "tensor": 0.0, "max": 0.0}
    for lp, n in zip(loops, iters, strict=True):
        lp["iterations"] = n
        t = {
            "issue": lp["issue_clk"],
            "shared": lp["shared_bytes"] / SHARED_BPC,
            "tensor": lp["mma_flops"] / fpc if lp["mma_flops"] else 0.0,
        }
        lp.update({f"{k}_clk_iter": v for k, v in t.items()})
        for k, v in t.items():
            clk[k] += n * v
        clk["max"] += n * max(t.values())
    tf = {k: (useful / (v / SMS / CLOCK_HZ) / 1e12 if v else float("inf")) for k, v in clk.items()}
    return {
        "version": version,
        "shape": shape.name,
        "tiles": f"{bm}x{bn} w{c90['warps']} s{c90['stages']}",
        "loops": loops,
        "useful_tflop": useful / 1e12,
        "ceilings_tf": {k: tf[k] for k in ("issue", "shared", "tensor")},
        "estimate_tf": tf["max"],
        "estimate_ms": 1e3 * clk["max"] / SMS / CLOCK_HZ,
        "resources": {
            f"sm_{a}": {k: c[k] for k in ("registers", "shared", "spill", "local", "shared_ok")}
            for a, c in ((80, c80), (90, c90))
        },
    }


def report(results: list[dict]) -> None:
    print(
        f"H100 SXM model: {SMS} SMs at {CLOCK_HZ / 1e9:.2f} GHz, {SCHEDULERS} warp-instr/clk, "
        f"shared {SHARED_BPC} B/clk, wgmma {WGMMA_FPC * SMS * CLOCK_HZ / 1e12:.0f} TF, "
        f"mma.sync {HMMA_FPC * SMS * CLOCK_HZ / 1e12:.0f} TF (dense bf16)\n"
    )
    for r in results:
        print(f"[{r['version']}] {r['shape']}: tiles {r['tiles']}")
        for lp in r["loops"]:
            print(
                f"  loop: {lp['iterations']:>8d} iters x {lp['instructions']:4d} instr/warp "
                f"({lp['hmma']} HMMA, {lp['hgmma']} HGMMA, {lp['ffma']} FFMA, {lp['bar']} BAR, "
                f"{lp['mufu']} MUFU, {lp['ldgsts']} LDGSTS); clk/iter issue "
                f"{lp['issue_clk_iter']:.0f} shared {lp['shared_clk_iter']:.0f} tensor "
                f"{lp['tensor_clk_iter']:.0f}"
            )
        res = ", ".join(
            f"{a}: {v['registers']} reg {v['shared']} B shared {v['spill']} B spill"
            + ("" if v["shared_ok"] and not v["spill"] and not v["local"] else " FAIL")
            for a, v in r["resources"].items()
        )
        print(f"  {res}")
    head = (
        f"\n{'shape':<36} {'ver':<4} {'tiles':<16} {'issue':>7} {'shared':>7} {'tensor':>7} "
        f"{'est TF':>7} {'est ms':>7}"
    )
    print(head)
    for r in results:
        c = r["ceilings_tf"]
        tensor = "FFMA" if c["tensor"] == float("inf") else f"{c['tensor']:.0f}"  # in issue
        print(
            f"{r['shape']:<36} {r['version']:<4} {r['tiles']:<16} {c['issue']:>7.0f} "
            f"{c['shared']:>7.0f} {tensor:>7} {r['estimate_tf']:>7.0f} "
            f"{r['estimate_ms']:>7.3f}"
        )
    print(f"\ngoal at {SHAPES[0].name}: lowest ceiling >= {GOAL_TF} TF")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--versions", default="v1,new")
    ap.add_argument("--shapes", help="indices into SHAPES, comma-separated (default: all)")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("attention_cost.py compiles: run it with TRITON_INTERPRET=0")
    os.environ["TRITON_INTERPRET"] = "0"
    os.environ["GRAPHBATCH_CPU_KERNELS"] = "triton"
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    shapes = SHAPES if not args.shapes else [SHAPES[int(i)] for i in args.shapes.split(",")]
    results = [cost(v, s) for s in shapes for v in args.versions.split(",")]
    report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
