"""GPU compile gate: every launch the launchers make, compiled for sm_80 and sm_90.

Run in its own process with ``TRITON_INTERPRET=0`` (the kernels must be real
``JITFunction``s and the launchers must take their GPU branches). ``JITFunction.run`` is
replaced by a recorder, so each launcher picks its tiles, warps and constexprs exactly
as on a GPU; Triton's own binder then specialises the arguments for each target
(dtypes, ``== 1`` ints, 16-divisibility), the distinct launches are compiled by
``triton.compile`` (ptxas included: no GPU needed), and the cubins' resources are read
with ``cuobjdump -res-usage`` plus the spill counts of ``ptxas -v``.

    python tests/kernels/gpu_compile.py [--table docs/kernel-resources.md] [--control]

Exit status 1 when a launch fails to compile, spills, uses local memory, or needs more
shared memory than the arch has.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("gpu_compile.py must run with TRITON_INTERPRET=0 (it compiles, it does not run)")
os.environ["TRITON_INTERPRET"] = "0"
# the launchers' CPU tensors must reach the JIT kernels, not the native torch path
os.environ["GRAPHBATCH_CPU_KERNELS"] = "triton"
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # the GPU default; silences a warning

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.backends.nvidia.compiler import get_ptxas  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402
from triton.runtime.jit import JITFunction, create_function_from_signature  # noqa: E402

ARCHS = (80, 90)
# Max dynamic shared memory per block (bytes): A100 163 KiB, H100 227 KiB.
SHARED_LIMIT = {80: 166912, 90: 232448}
_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class Launch:
    kernel: str
    arch: int
    key: str  # signature + constexprs + attrs + options: what Triton caches a binary by
    config: str  # human-readable: the constexprs and argument types that vary


@dataclass
class Result:
    launch: Launch
    ok: bool
    error: str = ""
    registers: int = 0
    shared: int = 0
    local: int = 0
    stack: int = 0
    spill_bytes: int = 0
    seconds: float = 0.0

    @property
    def problem(self) -> str:
        if not self.ok:
            return "compile error"
        if self.spill_bytes or self.local:
            return f"spills {self.spill_bytes} B, local {self.local} B"
        if self.shared > SHARED_LIMIT[self.launch.arch]:
            return f"shared {self.shared} B > {SHARED_LIMIT[self.launch.arch]} B"
        return ""


# ---- recording --------------------------------------------------------------------
_JOBS: dict[Launch, tuple] = {}  # launch -> (fn, signature, constexprs, attrs, options)


def _specialise(fn: JITFunction, args: tuple, kwargs: dict, arch: int):
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    kwargs = {"debug": False, **kwargs}
    bound, spec, opts = binder(*args, **kwargs)
    options, sig, constexprs, attrs = fn._pack_args(backend, kwargs, bound, spec, opts)
    return target, sig, constexprs, attrs, options


def _describe(fn: JITFunction, sig: dict, constexprs: dict, options) -> str:
    names = list(sig)
    consts = {names[p[0]]: v for p, v in constexprs.items()}
    types = sorted({t for n, t in sig.items() if t != "constexpr"})
    return f"{consts} warps={options.num_warps} types={types}"


def _record(self: JITFunction, *args, grid, warmup, **kwargs):
    for arch in ARCHS:
        target, sig, constexprs, attrs, options = _specialise(self, args, kwargs, arch)
        key = json.dumps(
            [sig, repr(sorted(constexprs.items())), repr(sorted(attrs.items())), options.hash()]
        )
        launch = Launch(self.__name__, arch, key, _describe(self, sig, constexprs, options))
        _JOBS.setdefault(launch, (self, sig, constexprs, attrs, options))


# ---- driving the launchers ----------------------------------------------------------
# Real checkpoints' shapes (graphbatch.models): (heads, kv heads, head_dim, hidden, vocab)
REAL_SHAPES = {
    "SmolLM2-135M": (9, 3, 64, 576, 49152),
    "Llama-3.1-8B": (32, 8, 128, 4096, 128256),
    "Qwen2.5-7B": (28, 4, 128, 3584, 152064),
    "Qwen3-8B": (32, 8, 128, 4096, 151936),
}
REAL_DTYPES = ("float32", "bfloat16")


def _sampler_calls():
    from graphbatch.kernels import new_error_counter, top_p_sample
    from graphbatch.models.tiny import PRESETS

    def call(S, V, dtype=torch.float32, k_dtype=torch.int32, out_dtype=torch.int64, **flags):
        f = lambda v, dt: torch.full((S,), v, dtype=dt)  # noqa: E731
        top_p_sample(
            torch.zeros(S, V, dtype=dtype),
            f(1.0, torch.float32),
            f(0.9, torch.float32),
            f(5, k_dtype),
            f(0, torch.int64),
            f(0, torch.int64),
            torch.tensor([S], dtype=torch.int32) if flags.get("nv_tensor", True) else S,
            out=torch.empty(S, dtype=out_dtype),
            error_counter=new_error_counter() if flags.get("err", True) else None,
            min_p=f(0.05, torch.float32) if flags.get("min_p", True) else None,
            logprobs=torch.empty(S, dtype=torch.float32) if flags.get("logprobs", True) else None,
        )

    vocabs = {p.vocab_size for p in PRESETS.values()} | {1, 111, 999, 32000, 128256}
    vocabs = sorted(vocabs | {v for *_, v in REAL_SHAPES.values()})
    for V in vocabs:
        for dtype in _FLOATS:
            call(16, V, dtype)  # what the executor launches, per vocabulary and dtype
    for S in (1, 64):
        call(S, 4096)
    call(16, 4096, k_dtype=torch.int64, out_dtype=torch.int32)
    for flag in ("nv_tensor", "err", "min_p", "logprobs"):
        call(16, 4096, **{flag: False})
    call(16, 4097, nv_tensor=False, err=False, min_p=False, logprobs=False)


def _slot_calls():
    from graphbatch.kernels import gather_slots, new_error_counter, scatter_slots
    from graphbatch.models.tiny import PRESETS

    def call(dtype, D, idx_dtype=torch.int64, err=True):
        table = torch.zeros(64, D, dtype=dtype)
        idx = torch.zeros(48, dtype=idx_dtype)
        counter = new_error_counter() if err else None
        gather_slots(table, idx, error_counter=counter)
        scatter_slots(table, idx, torch.zeros(48, D, dtype=dtype), error_counter=counter)

    # every dtype at one width; every width (odd ones and the presets' rows) at the
    # presets' dtypes; the index dtype and counter branches once
    for dtype in (*_FLOATS, torch.int8, torch.uint8, torch.int32, torch.int64):
        call(dtype, 64)
    widths = {1, 7, 4097}
    for p in PRESETS.values():
        widths |= {p.hidden_size, p.num_kv_heads * p.head_dim}
    # real models also gather hidden rows and the RoPE tables' head_dim-wide rows
    for _h, hkv, d, hidden, _v in REAL_SHAPES.values():
        widths |= {hidden, hkv * d, d}
    dtypes = {getattr(torch, p.dtype) for p in PRESETS.values()} | {torch.float32}
    for D in sorted(widths):
        for dtype in dtypes:
            call(dtype, D)
    for idx_dtype in (torch.int32, torch.int64):
        for err in (False, True):
            call(torch.bfloat16, 512, idx_dtype, err)


def _attention_calls():
    from graphbatch.kernels import new_error_counter
    from graphbatch.kernels.paged_attention import paged_attention
    from graphbatch.models.tiny import PRESETS

    presets = {(p.num_heads, p.num_kv_heads, p.head_dim, p.dtype) for p in PRESETS.values()}
    presets |= {(h, hkv, d, dt) for h, hkv, d, *_ in REAL_SHAPES.values() for dt in REAL_DTYPES}
    spread = {(8, 2, D, dt) for D in (16, 32, 64, 128, 256) for dt in ("float32", "bfloat16")}
    spread.add((8, 8, 128, "float16"))
    runs = [(shape, 16, 16, True, 64) for shape in sorted(spread | presets)]
    # the sequence capacity, block size and counter branches, at the presets' shapes
    variants = ((64, 16, True, 64), (16, 64, False, 64))
    runs += [(shape, *v) for shape in sorted(presets) for v in variants]
    # long prefill chunks (T=1024 over 8 sequences) take the large, wgmma-shaped tiles:
    # every model shape once, and the block-size / counter branches at one shape
    runs += [(shape, 8, 16, True, 1024) for shape in sorted(presets | spread)]
    runs += [((32, 8, 128, "bfloat16"), 8, bs, False, 1024) for bs in (64, 128)]
    for (H, HKV, D, dtype), S, block_size, err, T in runs:
        dt = getattr(torch, dtype)
        slots = 64 * block_size
        paged_attention(
            torch.zeros(T, H, D, dtype=dt),
            torch.zeros(slots, HKV, D, dtype=dt),
            torch.zeros(slots, HKV, D, dtype=dt),
            torch.zeros(S, 8, dtype=torch.int32),
            torch.zeros(S + 1, dtype=torch.int32),
            torch.zeros(S, dtype=torch.int32),
            torch.zeros(T, dtype=torch.int64),
            block_size,
            D**-0.5,
            error_counter=new_error_counter() if err else None,
        )


def record_launches() -> dict[Launch, tuple]:
    original = JITFunction.run
    JITFunction.run = _record
    try:
        _sampler_calls()
        _slot_calls()
        _attention_calls()
    finally:
        JITFunction.run = original
    return _JOBS


# ---- compiling -----------------------------------------------------------------------
def _tool(name: str) -> str:
    return os.path.join(os.path.dirname(get_ptxas(80).path), name)


def _resources(cubin: bytes) -> dict[str, int]:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run(
            [_tool("cuobjdump"), "-res-usage", f.name], capture_output=True, text=True, check=True
        ).stdout
    fields = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", text))
    return {k: int(v) for k, v in fields.items()}


def _spill_bytes(ptx: str, arch: int) -> int:
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as f:
        f.write(ptx)
        f.flush()
        gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
        log = subprocess.run(
            [get_ptxas(arch).path, "-v", "--gpu-name", gpu, f.name, "-o", os.devnull],
            capture_output=True,
            text=True,
        ).stderr
    spills = re.findall(r"(\d+) bytes spill (?:stores|loads)", log)
    if not spills:
        raise RuntimeError(f"ptxas -v printed no spill counts:\n{log}")
    return sum(int(s) for s in spills)


def compile_launch(launch: Launch) -> Result:
    fn, sig, constexprs, attrs, options = _JOBS[launch]
    t0 = time.perf_counter()
    try:
        k = triton.compile(
            ASTSource(fn, sig, constexprs, attrs),
            target=GPUTarget("cuda", launch.arch, 32),
            options=options.__dict__,
        )
    except Exception as e:  # reported per launch, the gate fails on it
        return Result(launch, False, error=f"{type(e).__name__}: {e}"[:2000])
    res = _resources(k.asm["cubin"])
    return Result(
        launch,
        True,
        registers=res.get("REG", 0),
        shared=max(res.get("SHARED", 0), k.metadata.shared),
        local=res.get("LOCAL", 0),
        stack=res.get("STACK", 0),
        spill_bytes=_spill_bytes(k.asm["ptx"], launch.arch),
        seconds=time.perf_counter() - t0,
    )


def compile_all(launches: list[Launch], workers: int) -> list[Result]:
    import multiprocessing

    ctx = multiprocessing.get_context("fork")  # workers inherit the recorded launches
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        return list(pool.map(compile_launch, launches))


def control() -> bool:
    """A kernel the interpreter runs but the compiler rejects must fail here."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from control_kernel import retyped_kernel

    _JOBS.clear()
    original = JITFunction.run
    JITFunction.run = _record
    try:
        retyped_kernel[(1,)](torch.zeros(64), 64, BLOCK=32)
    finally:
        JITFunction.run = original
    results = [compile_launch(launch) for launch in _JOBS]
    return bool(results) and all(not r.ok and "CompilationError" in r.error for r in results)


# ---- report -------------------------------------------------------------------------
def table(results: list[Result]) -> str:
    lines = [
        "# Kernel resources (generated by `make gpu-compile`; do not edit)",
        "",
        "Every distinct launch the launchers make, compiled by Triton "
        f"{triton.__version__} for each arch without a GPU; resources from "
        "`cuobjdump -res-usage` (registers per thread, shared bytes per block, local and "
        "stack bytes per thread) and spill bytes from `ptxas -v`.",
        "",
        "| kernel | config | arch | registers | shared B | local B | stack B | spill B | ok |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in sorted(results, key=lambda r: (r.launch.kernel, r.launch.config, r.launch.arch)):
        cfg = r.launch.config.replace("|", "/")
        status = r.problem or "yes"
        lines.append(
            f"| {r.launch.kernel} | {cfg} | sm_{r.launch.arch} | {r.registers} | {r.shared} "
            f"| {r.local} | {r.stack} | {r.spill_bytes} | {status} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--table", help="write the resource table (markdown) here")
    p.add_argument("--json", help="write per-launch results (json) here")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--control", action="store_true", help="also check the control kernel")
    p.add_argument("--only", help="compile only kernels whose name contains this")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    launches = [k for k in record_launches() if not args.only or args.only in k.kernel]
    results = compile_all(launches, args.workers)
    failed = [r for r in results if r.problem]
    kernels = sorted({r.launch.kernel for r in results})
    print(
        f"compiled {len(results)} launches ({len(results) // len(ARCHS)} configs x "
        f"sm_{'/sm_'.join(map(str, ARCHS))}) of {kernels} in {time.perf_counter() - t0:.0f} s"
    )
    for r in failed:
        print(f"FAIL {r.launch.kernel} sm_{r.launch.arch} {r.launch.config}: {r.problem}")
        if r.error:
            print("   ", r.error.replace("\n", "\n    "))
    if args.table:
        with open(args.table, "w") as f:
            f.write(table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                [
                    {"kernel": r.launch.kernel, "arch": r.launch.arch, "config": r.launch.config,
                     "ok": r.ok, "problem": r.problem, "registers": r.registers,
                     "shared": r.shared, "local": r.local, "spill_bytes": r.spill_bytes}
                    for r in results
                ],
                f,
                indent=1,
            )  # fmt: skip
    status = 0 if not failed else 1
    if args.control:
        caught = control()
        print(f"control kernel rejected by the compiler: {caught}")
        status = status or (0 if caught else 1)
    return status


if __name__ == "__main__":
    sys.exit(main())
