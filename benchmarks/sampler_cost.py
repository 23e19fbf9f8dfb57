"""Paper cost of the Triton sampler on an H100, without a GPU: today's kernel vs v1.

Two measurements, one model:

1. Instructions. The launcher's GPU launch (the executor's variant: fp32 logits, min_p,
   logprobs, error counter, num_valid tensor) is compiled for sm_90 by Triton's real
   compiler (``triton.compile`` with ``GPUTarget("cuda", 90, 32)``, as
   ``tests/kernels/gpu_compile.py`` does) and disassembled with the ``cuobjdump`` bundled
   in Triton. Every innermost loop (a backward branch whose range holds no other loop) is
   a tile loop over the vocabulary; its SASS instructions x warps / tile elements =
   warp instructions issued per logit element in that pass.
2. Passes. The same launcher runs under Triton's interpreter with the GPU tiles
   (``GRAPHBATCH_GPU_TILES=1``: one row per program) on LLM-like logits (B=4, V=131072)
   with every logits load counted (elements whose mask is on), per load site. Elements
   read / (B x V) = passes over the logits; each load site is one tile loop, mapped to
   the SASS loops in program order.

Model (H100 SXM; assumptions, not measurements):
- 132 SMs at 1.755 GHz (sustained boost under load), 4 schedulers per SM each issuing
  one warp instruction per clock: every SASS instruction costs one issue slot (MUFU,
  shuffles and memory ops are not charged extra; their throughput limits are ignored).
- One 8-warp program per row; a program's rows never share an SM with more than
  ceil(B / 132) rows' worth of work (two programs fit per SM at <= 128 registers).
- HBM 3.35 TB/s for the whole chip, and at most 64 B/clock per SM (the SM-to-L2 path):
  a pass over B rows moves 4*B*V bytes (fp32) at min(3.35 TB/s, active SMs x 112 GB/s).
  Every pass re-reads HBM (64 MiB at B=128 does not stay in the 50 MB L2) and the
  loads are assumed deep enough in flight to reach that rate (a GPU must confirm).
- Time of a pass = max(memory time, issue time of its loop); a kernel = the sum over
  its passes. Work outside the tile loops (one block reduction and the scalar
  bookkeeping per pass, the launch) is not counted.
- Floor = one read of the logits at HBM rate: 4*B*V / 3.35 TB/s.

A GPU run is what confirms it: ``pytest -m gpu tests/kernels`` and
``python benchmarks/bench_sampling.py`` (see docs/gpu-notes.md, "Sampler cost model").

    TRITON_INTERPRET=0 .venv/bin/python benchmarks/sampler_cost.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

from _sass import innermost_loop_bodies  # noqa: E402  (a sibling script module)

ROOT = Path(__file__).resolve().parents[1]
SMS = 132
SCHEDULERS = 4
CLOCK_HZ = 1.755e9
HBM_BPS = 3.35e12
SM_BPS = 64 * CLOCK_HZ
SHAPES = [(b, v) for v in (131072, 151552) for b in (1, 32, 128, 256)]
GOAL_SHAPE = (128, 131072)
COUNT_B, COUNT_V = 4, 131072  # the interpreter run that counts passes
# (temperature, top_p, top_k, min_p) per configuration costed
CONFIGS = {
    "top-p": (1.0, 0.9, 0, 0.0),
    "top-p+min-p": (1.0, 0.9, 0, 0.05),
    "top-k+top-p": (1.0, 0.9, 50, 0.0),
}
ALL_ON = (1.0, 0.9, 50, 0.05)  # every pass taken: fixes the load sites' program order
VERSIONS = {
    "v1": ("benchmarks/_sampler_v1.py", "_sampler_v1"),
    "new": ("kernels/top_p_sample.py", "graphbatch.kernels.top_p_sample"),
}


def llm_like_logits(B: int, V: int, seed: int = 0):
    """A Gaussian bulk (sd 2) plus a Zipf-like head of 2000 tokens 6-21 above it: the
    nucleus at top_p 0.9 holds tens to hundreds of tokens, like a real LM's."""
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, V, generator=g) * 2.0
    head = torch.randint(0, V, (B, 2000), generator=g)
    rank = torch.arange(1, 2001, dtype=torch.float32)
    x.scatter_add_(1, head, (21.0 - 2.0 * torch.log(rank)).expand(B, -1).contiguous())
    return x


def _module(version: str):
    import importlib

    path, name = VERSIONS[version]
    if version == "v1":
        sys.path.insert(0, str(ROOT / "benchmarks"))
    return importlib.import_module(name), str(ROOT / path)


def _call(mod, logits, cfg, num_valid_tensor=True):
    import torch

    B = logits.shape[0]
    t, p, k, m = cfg
    f = lambda v, dt: torch.full((B,), v, dtype=dt)  # noqa: E731
    out = torch.empty(B, dtype=torch.int64)
    mod.top_p_sample(
        logits,
        f(t, torch.float32),
        f(p, torch.float32),
        f(k, torch.int32),
        torch.arange(B, dtype=torch.int64),
        torch.zeros(B, dtype=torch.int64),
        torch.tensor([B], dtype=torch.int32) if num_valid_tensor else B,
        out=out,
        error_counter=mod.rt.new_error_counter(),
        min_p=f(m, torch.float32),
        logprobs=torch.empty(B, dtype=torch.float32),
        check_values=False,
    )
    return out


# ---- passes: the interpreter, every logits load counted -----------------------------
def count_passes(version: str) -> dict:
    """{config: {site: passes}}, the sites in program order, and tile elements per site."""
    import numpy as np
    from triton.runtime import interpreter

    mod, kernel_file = _module(version)
    logits = llm_like_logits(COUNT_B, COUNT_V)
    lo, hi = logits.data_ptr(), logits.data_ptr() + logits.numel() * logits.element_size()
    counts: dict[tuple, int] = {}
    tiles: dict[tuple, int] = {}
    order: list[tuple] = []
    original = interpreter.InterpreterBuilder.create_masked_load

    def counting_load(self, ptrs, mask, other, cache_policy, is_volatile):
        p = ptrs.data.astype(np.uint64)
        inside = (p >= lo) & (p < hi) & mask.data.astype(bool)
        n = int(inside.sum())
        if n:
            site, f = [], sys._getframe(1)
            while f is not None:
                if f.f_code.co_filename == kernel_file:
                    site.append((f.f_code.co_name, f.f_lineno))
                f = f.f_back
            site = tuple(reversed(site))
            if site not in counts:
                order.append(site)
                counts[site] = 0
            counts[site] += n
            tiles[site] = max(tiles.get(site, 0), int(p.size))
        return original(self, ptrs, mask, other, cache_policy, is_volatile)

    interpreter.InterpreterBuilder.create_masked_load = counting_load
    result = {}
    try:
        _call(mod, logits, ALL_ON)
        sites = list(order)
        for name, cfg in CONFIGS.items():
            counts.clear()
            _call(mod, logits, cfg)
            per = {}
            for site, n in counts.items():
                if site not in sites:
                    sites.append(site)
                per[sites.index(site)] = n / (COUNT_B * COUNT_V)
            result[name] = per
    finally:
        interpreter.InterpreterBuilder.create_masked_load = original
    names = [" > ".join(f"{fn}:{ln}" for fn, ln in s) for s in sites]
    return {"passes": result, "sites": names, "tiles": [tiles.get(s, 0) for s in sites]}


def _passes_subprocess(version: str, cache: str | None) -> dict:
    """The interpreter's count (minutes for v1), cached by the kernel file's contents."""
    import hashlib

    src = (ROOT / VERSIONS[version][0]).read_bytes() + Path(__file__).read_bytes()
    key = f"{version}:{hashlib.sha1(src).hexdigest()}"
    store = json.loads(Path(cache).read_text()) if cache and Path(cache).exists() else {}
    if key in store:
        return store[key]
    env = {
        **os.environ,
        "TRITON_INTERPRET": "1",
        "GRAPHBATCH_GPU_TILES": "1",
        "GRAPHBATCH_CPU_KERNELS": "triton",
    }
    proc = subprocess.run(
        [sys.executable, __file__, "--count-passes", version],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if proc.returncode:
        raise RuntimeError(proc.stdout[-3000:] + proc.stderr[-3000:])
    counted = json.loads(proc.stdout.strip().splitlines()[-1])
    if cache:
        store[key] = counted
        Path(cache).write_text(json.dumps(store))
    return counted


# ---- instructions: sm_90 SASS of each tile loop -------------------------------------
def compile_sm90(version: str):
    """(cubin bytes, num_warps) of the executor's launch of ``version``."""
    import triton
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    sys.path.insert(0, str(ROOT / "tests" / "kernels"))
    import gpu_compile

    mod, _ = _module(version)
    seen = []

    def record(self, *args, grid, warmup, **kwargs):
        seen.append((self, args, kwargs))

    original = JITFunction.run
    JITFunction.run = record
    try:
        _call(mod, llm_like_logits(2, COUNT_V), ALL_ON)
    finally:
        JITFunction.run = original
    fn, args, kwargs = seen[0]
    target, sig, constexprs, attrs, options = gpu_compile._specialise(fn, args, kwargs, 90)
    k = triton.compile(
        ASTSource(fn, sig, constexprs, attrs), target=target, options=options.__dict__
    )
    return k.asm["cubin"], options.num_warps, gpu_compile._tool("cuobjdump")


def sass_loops(cubin: bytes, cuobjdump: str) -> list[dict]:
    """Innermost loops in address order: instructions, shuffles, barriers, MUFU ops."""
    out = []
    for body in innermost_loop_bodies(cubin, cuobjdump):
        out.append(
            {
                "instructions": len(body),
                "shfl": sum("SHFL" in op for op in body),
                "bar": sum(op.split()[0].startswith("BAR") for op in body if op),
                "mufu": sum("MUFU" in op for op in body),
            }
        )
    return out


# ---- model -------------------------------------------------------------------------
def pass_time_us(B: int, V: int, ipe: float) -> float:
    """max(memory, issue) for one pass over B rows of V fp32 logits."""
    rows_per_sm = math.ceil(B / SMS)
    active = min(B, SMS)
    mem = 4 * B * V / min(HBM_BPS, active * SM_BPS)
    issue = rows_per_sm * V * ipe / (SCHEDULERS * CLOCK_HZ)
    return 1e6 * max(mem, issue)


def floor_us(B: int, V: int) -> float:
    return 1e6 * 4 * B * V / HBM_BPS


def cost(version: str, cache: str | None = None) -> dict:
    cubin, warps, cuobjdump = compile_sm90(version)
    loops = sass_loops(cubin, cuobjdump)
    counted = _passes_subprocess(version, cache)
    # the tile loops' load sites: those that read a whole tile per iteration
    sites = [i for i, t in enumerate(counted["tiles"]) if t > 1]
    if len(sites) != len(loops):
        print(
            f"warning [{version}]: {len(loops)} innermost SASS loops, {len(sites)} tile "
            "load sites: mapped in order, extra loops ignored",
            file=sys.stderr,
        )
    ipe = {}
    per_loop = []
    for j, site in enumerate(sites):
        loop = loops[min(j, len(loops) - 1)]
        ipe[site] = loop["instructions"] * warps / counted["tiles"][site]
        per_loop.append({**loop, "site": counted["sites"][site], "tile": counted["tiles"][site],
                         "per_element": ipe[site]})  # fmt: skip
    configs = {}
    for name, per in counted["passes"].items():
        passes = sum(per.values())
        times = {}
        for B, V in SHAPES:
            times[f"{B}x{V}"] = sum(
                n * pass_time_us(B, V, ipe.get(int(s), 0.0)) for s, n in per.items()
            )
        configs[name] = {"passes": passes, "per_site": per, "us": times}
    return {"warps": warps, "loops": per_loop, "configs": configs}


def report(results: dict) -> None:
    print(
        f"H100 model: {SMS} SMs x {SCHEDULERS} warp-instr/clk at {CLOCK_HZ / 1e9:.3f} GHz, "
        f"HBM {HBM_BPS / 1e12:.2f} TB/s; passes counted at B={COUNT_B}, V={COUNT_V} "
        "(LLM-like logits, T=1, top_p=0.9, top_k=50, min_p=0.05)"
    )
    for version, r in results.items():
        print(f"\n[{version}] {r['warps']} warps; tile loops (sm_90 SASS):")
        for lp in r["loops"]:
            print(
                f"  {lp['instructions']:5d} instr/iter ({lp['shfl']} SHFL, {lp['bar']} BAR, "
                f"{lp['mufu']} MUFU), tile {lp['tile']:5d}: {lp['per_element']:.3f} "
                f"warp-instr/element  [{lp['site']}]"
            )
    head = f"{'config':<13} {'version':<7} {'passes':>6} " + " ".join(
        f"{f'{b}x{v}':>11}" for b, v in SHAPES
    )
    print("\nestimated us per launch (B x V):\n" + head)
    print(f"{'floor':<13} {'':<7} {1:>6} " + " ".join(f"{floor_us(b, v):>11.1f}"
                                                    for b, v in SHAPES))  # fmt: skip
    for name in CONFIGS:
        for version, r in results.items():
            c = r["configs"][name]
            print(
                f"{name:<13} {version:<7} {c['passes']:>6.2f} "
                + " ".join(f"{c['us'][f'{b}x{v}']:>11.1f}" for b, v in SHAPES)
            )
    b, v = GOAL_SHAPE
    print(f"\ngoal at B={b}, V={v}: <= 4x floor = {4 * floor_us(b, v):.1f} us")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count-passes", choices=list(VERSIONS), help=argparse.SUPPRESS)
    ap.add_argument("--versions", default="v1,new")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--cache", help="reuse pass counts stored here (keyed by the sources)")
    args = ap.parse_args(argv)
    if args.count_passes:
        print(json.dumps(count_passes(args.count_passes)))
        return 0
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("sampler_cost.py compiles: run it with TRITON_INTERPRET=0")
    os.environ["TRITON_INTERPRET"] = "0"
    os.environ["GRAPHBATCH_CPU_KERNELS"] = "triton"
    results = {v: cost(v, args.cache) for v in args.versions.split(",")}
    report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
