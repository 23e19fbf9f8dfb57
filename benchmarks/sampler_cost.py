"""Paper cost of the Triton sampler on an H100, without a GPU: each kernel version side by side.

Versions: ``v1`` (benchmarks/_sampler_v1.py: a block reduction every tile), ``v2``
(benchmarks/_sampler_v2.py: exact pivot searches, 16 pivots a pass, then the draw) and
``new`` (kernels/top_p_sample.py: draw first, verify after).

Two measurements, one model:

1. Instructions. The launcher's GPU launch (the executor's variant: fp32 logits, min_p,
   logprobs, error counter, num_valid tensor) is compiled for sm_90 by Triton's real
   compiler (``triton.compile`` with ``GPUTarget("cuda", 90, 32)``, as
   ``tests/kernels/gpu_compile.py`` does) and disassembled with the ``nvdisasm`` bundled
   in Triton. Every innermost loop (a backward branch whose range holds no other loop) is
   a tile loop over the vocabulary; its SASS instructions x warps / tile elements =
   warp instructions issued per logit element in that pass (likewise MUFU ops).
2. Passes. The same launcher runs under Triton's interpreter on LLM-like logits
   (V=131072; COUNT_ROWS rows) with every logits load counted (elements whose mask is
   on), per load site and per row (see ``count_passes`` for the tiles each version runs
   with). Elements read / (rows x V) = passes over the logits. A load site is matched
   with the SASS loop whose line table holds the same call chain of kernel-source lines
   (``nvdisasm -gi`` keeps inlined call sites).

The new kernel draws first and verifies after, so its pass count is a random variable
(a redraw when the drawn token falls outside the kept set, about 1 - top_p of the time):
it is counted over 64 rows, mean and worst row both printed. v1 and v2 run a fixed
search whose rounds barely depend on the row: 4 rows (the interpreter takes minutes).

Model (H100 SXM; assumptions, not measurements):
- 132 SMs at 1.755 GHz (sustained boost under load), 4 schedulers per SM each issuing
  one warp instruction per clock: every SASS instruction costs one issue slot. MUFU ops
  (exp2, lg2) have their own ceiling, 16 lanes per clock per SM; shuffles and memory
  ops are not charged extra.
- One 8-warp program per row; a program's rows never share an SM with more than
  ceil(B / 132) rows' worth of work (two programs fit per SM at <= 128 registers).
- HBM 3.35 TB/s for the whole chip, and at most 64 B/clock per SM (the SM-to-L2 path):
  a pass over B rows moves 4*B*V bytes (fp32) at min(3.35 TB/s, active SMs x 112 GB/s).
  Every pass re-reads HBM (64 MiB at B=128 does not stay in the 50 MB L2) and the
  loads are assumed deep enough in flight to reach that rate (a GPU must confirm).
- Time of a pass = max(memory time, issue time, MUFU time of its loop); a kernel = the
  sum over its passes. Work outside the tile loops (the block reductions and the
  bracket bookkeeping after each pass, the launch) is not counted; its static size is
  printed beside the loops.
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

from _sass import innermost_loops_with_lines  # noqa: E402  (a sibling script module)

ROOT = Path(__file__).resolve().parents[1]
SMS = 132
SCHEDULERS = 4
CLOCK_HZ = 1.755e9
MUFU_LANES = 16  # per SM per clock
HBM_BPS = 3.35e12
SM_BPS = 64 * CLOCK_HZ
SHAPES = [(b, v) for v in (131072, 151552) for b in (1, 32, 128, 256)]
GOAL_SHAPE = (128, 131072)
COUNT_V = 131072  # the interpreter run that counts passes
COUNT_ROWS = {"v1": 4, "v2": 4, "new": 64}
# (temperature, top_p, top_k, min_p) per configuration costed
CONFIGS = {
    "top-p": (1.0, 0.9, 0, 0.0),
    "top-p+min-p": (1.0, 0.9, 0, 0.05),
    "top-k+top-p": (1.0, 0.9, 50, 0.0),
}
ALL_ON = (1.0, 0.9, 50, 0.05)  # the compiled variant: every pass present
VERSIONS = {
    "v1": ("benchmarks/_sampler_v1.py", "_sampler_v1"),
    "v2": ("benchmarks/_sampler_v2.py", "_sampler_v2"),
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
    if version != "new":
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
def _counting(kernel_file: str, lo: int, hi: int, row_bytes: int, rows: int):
    """A masked-load hook counting the logits elements each (load site, row) reads, and
    the largest tile each site loads at once."""
    import numpy as np
    from triton.runtime import interpreter

    counts: dict[str, np.ndarray] = {}
    tiles: dict[str, int] = {}
    original = interpreter.InterpreterBuilder.create_masked_load

    def counting_load(self, ptrs, mask, other, cache_policy, is_volatile):
        p = ptrs.data.astype(np.uint64)
        inside = (p >= lo) & (p < hi) & mask.data.astype(bool)
        if inside.any():
            chain, f = [], sys._getframe(1)
            while f is not None:
                if f.f_code.co_filename == kernel_file:
                    chain.append(f.f_lineno)
                f = f.f_back
            site = " ".join(map(str, reversed(chain)))
            which = ((p[inside] - lo) // row_bytes).astype(np.int64)
            counts.setdefault(site, np.zeros(rows))[:] += np.bincount(which, minlength=rows)
            tiles[site] = max(tiles.get(site, 0), int(p.size))
        return original(self, ptrs, mask, other, cache_policy, is_volatile)

    return counting_load, original, counts, tiles


def count_passes(version: str) -> dict:
    """Per config: passes per load site (mean over rows) and passes per row; each site
    as its chain of kernel-source lines (outermost call first), with its GPU tile size.

    v1 and v2 run with the GPU tiles (one row per program: their later passes read the
    rows that are done too, so several rows a program would count those reads). The new
    kernel masks every load with the rows still at work, and a row's passes depend on
    its own state only, so its rows run with the interpreter's tiles (many rows a
    program, minutes faster); one row with the GPU tiles gives each site's tile size.
    """
    from triton.runtime import interpreter

    mod, kernel_file = _module(version)
    B, V = COUNT_ROWS[version], COUNT_V
    logits = llm_like_logits(B, V)
    lo = logits.data_ptr()
    hi = lo + logits.numel() * logits.element_size()
    hook, original, counts, tiles = _counting(kernel_file, lo, hi, V * logits.element_size(), B)
    result = {}
    interpreter.InterpreterBuilder.create_masked_load = hook
    try:
        if version == "new":
            os.environ["GRAPHBATCH_GPU_TILES"] = "1"
            _call(mod, logits[:1], ALL_ON)  # pass 1, verify passes
            _call(mod, logits[:1], (100.0, 1.0, 0, 1.0))  # min_p 1 rejects a flat draw: redraw
            gpu_tiles = dict(tiles)
            os.environ["GRAPHBATCH_GPU_TILES"] = "0"
        for name, cfg in CONFIGS.items():
            counts.clear()
            _call(mod, logits, cfg)
            per_site = {s: float(n.sum() / (B * V)) for s, n in counts.items()}
            per_row = sum(counts.values()) / V
            result[name] = {"per_site": per_site, "per_row": [float(r) for r in per_row]}
    finally:
        interpreter.InterpreterBuilder.create_masked_load = original
    return {"passes": result, "tiles": gpu_tiles if version == "new" else tiles}


def _passes_subprocess(version: str, cache: str | None) -> dict:
    """The interpreter's count (minutes for v1), cached by the sources' contents."""
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
    """(cubin bytes, num_warps, nvdisasm path, kernel source path) of the executor's
    launch of ``version``."""
    import triton
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    sys.path.insert(0, str(ROOT / "tests" / "kernels"))
    import gpu_compile

    mod, kernel_file = _module(version)
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
    nvdisasm = str(Path(gpu_compile._tool("cuobjdump")).with_name("nvdisasm"))
    return k.asm["cubin"], options.num_warps, nvdisasm, kernel_file


def sass_loops(cubin: bytes, nvdisasm: str, source: str) -> tuple[list[dict], dict]:
    """(innermost loops in address order, totals outside them): instructions, shuffles,
    barriers, MUFU ops, and each loop's source-line chains."""

    def tally(ops):
        return {
            "instructions": len(ops),
            "shfl": sum("SHFL" in op for op in ops),
            "bar": sum(op.split()[0].startswith("BAR") for op in ops if op),
            "mufu": sum("MUFU" in op for op in ops),
        }

    loops = innermost_loops_with_lines(cubin, nvdisasm, source)
    out = [{**tally(lp["ops"]), "chains": lp["chains"]} for lp in loops]
    everything = innermost_loops_with_lines(cubin, nvdisasm, source, whole=True)
    total = tally(everything["ops"])
    outside = {k: total[k] - sum(lp[k] for lp in out) for k in total}
    return out, outside


def _loop_of(site: str, loops: list[dict]) -> int | None:
    """The loop whose instructions carry the site's call chain (its innermost lines)."""
    chain = tuple(int(n) for n in site.split())
    for i, lp in enumerate(loops):
        if any(c and chain[-len(c) :] == c for c in lp["chains"]):
            return i
    return None


# ---- model -------------------------------------------------------------------------
def pass_time_us(B: int, V: int, ipe: float, mpe: float) -> float:
    """max(memory, issue, MUFU) for one pass over B rows of V fp32 logits; ipe / mpe:
    warp instructions / warp MUFU ops per element."""
    rows_per_sm = math.ceil(B / SMS)
    active = min(B, SMS)
    mem = 4 * B * V / min(HBM_BPS, active * SM_BPS)
    issue = rows_per_sm * V * ipe / (SCHEDULERS * CLOCK_HZ)
    mufu = rows_per_sm * V * mpe * 32 / (MUFU_LANES * CLOCK_HZ)
    return 1e6 * max(mem, issue, mufu)


def floor_us(B: int, V: int) -> float:
    return 1e6 * 4 * B * V / HBM_BPS


def cost(version: str, cache: str | None = None) -> dict:
    cubin, warps, nvdisasm, source = compile_sm90(version)
    loops, outside = sass_loops(cubin, nvdisasm, source)
    counted = _passes_subprocess(version, cache)
    per_loop = []
    rate = {}  # site -> (instructions, MUFU ops) per element
    for site, tile in counted["tiles"].items():
        if tile <= 1:
            continue  # a scalar load (the drawn token's logit), outside the tile loops
        i = _loop_of(site, loops)
        if i is None:
            print(f"warning [{version}]: load site {site} in no SASS loop", file=sys.stderr)
            continue
        lp = loops[i]
        rate[site] = (lp["instructions"] * warps / tile, lp["mufu"] * warps / tile)
        per_loop.append({**{k: v for k, v in lp.items() if k != "chains"}, "site": site,
                         "tile": tile, "per_element": rate[site][0],
                         "mufu_per_element": rate[site][1]})  # fmt: skip
    configs = {}
    for name, counts in counted["passes"].items():
        per = {s: n for s, n in counts["per_site"].items() if s in rate}
        times = {}
        for B, V in SHAPES:
            times[f"{B}x{V}"] = sum(n * pass_time_us(B, V, *rate[s]) for s, n in per.items())
        rows = counts["per_row"]
        configs[name] = {
            "passes": sum(per.values()),
            "worst_row": max(rows),
            "per_site": per,
            "us": times,
        }
    return {"warps": warps, "loops": per_loop, "outside": outside, "configs": configs,
            "rows_counted": COUNT_ROWS[version]}  # fmt: skip


def report(results: dict) -> None:
    print(
        f"H100 model: {SMS} SMs x {SCHEDULERS} warp-instr/clk at {CLOCK_HZ / 1e9:.3f} GHz, "
        f"{MUFU_LANES} MUFU lanes/clk/SM, HBM {HBM_BPS / 1e12:.2f} TB/s; passes counted at "
        f"V={COUNT_V} (LLM-like logits, T=1, top_p=0.9, top_k=50, min_p=0.05)"
    )
    for version, r in results.items():
        print(f"\n[{version}] {r['warps']} warps; tile loops (sm_90 SASS):")
        for lp in r["loops"]:
            print(
                f"  {lp['instructions']:5d} instr/iter ({lp['shfl']} SHFL, {lp['bar']} BAR, "
                f"{lp['mufu']} MUFU), tile {lp['tile']:5d}: {lp['per_element']:.3f} "
                f"warp-instr/element, {lp['mufu_per_element']:.3f} MUFU  [lines {lp['site']}]"
            )
        o = r["outside"]
        print(
            f"  outside the tile loops (static, run once a pass or once): {o['instructions']} "
            f"instr, {o['shfl']} SHFL, {o['bar']} BAR"
        )
    head = f"{'config':<13} {'version':<7} {'passes':>6} {'worst':>5} " + " ".join(
        f"{f'{b}x{v}':>11}" for b, v in SHAPES
    )
    print("\nestimated us per launch (B x V); passes: mean over the rows counted, worst row:")
    print(head)
    print(f"{'floor':<13} {'':<7} {1:>6} {'':>5} " + " ".join(f"{floor_us(b, v):>11.1f}"
                                                           for b, v in SHAPES))  # fmt: skip
    for name in CONFIGS:
        for version, r in results.items():
            c = r["configs"][name]
            print(
                f"{name:<13} {version:<7} {c['passes']:>6.2f} {c['worst_row']:>5.1f} "
                + " ".join(f"{c['us'][f'{b}x{v}']:>11.1f}" for b, v in SHAPES)
            )
    b, v = GOAL_SHAPE
    goal = f"{b}x{v}"
    fl = floor_us(b, v)
    print(f"\nat B={b}, V={v}: floor {fl:.1f} us, goal <= 4x floor = {4 * fl:.1f} us")
    for name in CONFIGS:
        line = ", ".join(
            f"{version} {r['configs'][name]['us'][goal]:.1f} us "
            f"({r['configs'][name]['us'][goal] / fl:.2f}x)"
            for version, r in results.items()
        )
        print(f"  {name:<13} {line}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count-passes", choices=list(VERSIONS), help=argparse.SUPPRESS)
    ap.add_argument("--versions", default="v1,v2,new")
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
        Path(args.json).write_text(json.dumps(results, indent=1, default=sorted))
    return 0


if __name__ == "__main__":
    sys.exit(main())
