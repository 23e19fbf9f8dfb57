"""GPU compile gate: every launch the executor and the launchers make, compiled for sm_80
and sm_90.

Run in its own process with ``TRITON_INTERPRET=0`` (the kernels must be real
``JITFunction``s and the launchers must take their GPU branches). ``JITFunction.run`` is
the launch point every launcher reaches (``kernel[grid](...)``); it is replaced by a
recorder, so nothing runs, each launcher picks its tiles, warps and constexprs exactly as
on a GPU, and Triton's own binder specialises the arguments for each target (dtypes,
``== 1`` ints, 16-divisible ints and pointers). Two sources feed the recorder:

- **executor**: ``GraphExecutor._forward_and_sample`` (the step a CUDA graph captures),
  for every bucket, on the torch and the Paddle backend (CPU tensors, the Triton path),
  at the scheduler configs the project runs: the test suite's (block 8, 4 sequences),
  the presets tiny / small / large at serving's limits (block 16), and real architectures
  (SmolLM2-135M, Llama-3.1-8B, Qwen2.5-7B, Qwen3-8B; fp32 and bf16) at the checkpoint
  limits. No kernel runs, so no value is read: the models' matmuls return uninitialised
  outputs of the right shape and dtype (what a launch sees is shapes, dtypes and
  addresses), real architectures keep one layer (every layer launches the same), a
  small MLP (it launches no kernel) and, for the model, a stand-in vocabulary with the
  real one's divisibility (the embedding gather's row count is an int argument); the
  sampler's launch at the real vocabulary is driven by the executor with a model that
  returns [S, V] logits. Paddle's CPU wheel has no bf16 ``add``/``silu`` kernels, so the
  bf16 models run on torch only; that the Paddle runs add no configuration the torch
  runs lack is printed (``paddle-only``) and tested.
- **grid**: the launchers called directly over a shape grid (odd widths, every dtype,
  each optional argument on and off, long prefill chunks).

The distinct launches (Triton's binary key: signature, constexprs, attributes, options)
are compiled by ``triton.compile`` (ptxas included: no GPU needed) and the cubins'
resources read with ``cuobjdump -res-usage`` plus the spill counts of ``ptxas -v``.
Results are cached in ``.pytest_cache/d/gpu-compile`` (``--cache``, ``--no-cache``),
keyed by the kernel's source (``JITFunction.cache_key``: the kernel and every
``@triton.jit`` helper it calls), the launch key, the arch and the Triton and ptxas
versions: editing a kernel recompiles exactly its launches.

    python tests/kernels/gpu_compile.py [--table docs/kernel-resources.md] [--control]

Exit status 1 when a launch fails to compile, spills, uses local memory, or needs more
shared memory than the arch has; with ``--control``, also when the planted compile error
or the planted spill (``control_kernel.py``) is not caught.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import hashlib
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("gpu_compile.py must run with TRITON_INTERPRET=0 (it compiles, it does not run)")
os.environ["TRITON_INTERPRET"] = "0"
# the launchers' CPU tensors must reach the JIT kernels, not the native torch path
os.environ["GRAPHBATCH_CPU_KERNELS"] = "triton"
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # the GPU default; silences a warning
# one math thread (torch and Paddle): the executor drive's elementwise math is small, and
# on 2 shared cores a multi-threaded op waits on a busy one
os.environ.setdefault("OMP_NUM_THREADS", "1")

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)  # tests.* (the test configs, random_decoder's checkpoint names)
sys.path.insert(0, HERE)  # control_kernel

import torch  # noqa: E402
import triton  # noqa: E402
from torch.overrides import TorchFunctionMode  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.backends.nvidia.compiler import get_ptxas  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402
from triton.runtime.jit import JITFunction, create_function_from_signature  # noqa: E402

ARCHS = (80, 90)
# Max dynamic shared memory per block (bytes): A100 163 KiB, H100 227 KiB.
SHARED_LIMIT = {80: 166912, 90: 232448}
_FLOATS = (torch.float32, torch.float16, torch.bfloat16)
GATE_VERSION = 2  # bump when what a cached result holds changes
DEFAULT_CACHE = os.path.join(ROOT, ".pytest_cache", "d", "gpu-compile")
SOURCES = ("executor", "grid")


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
    cached: bool = False
    sources: list[str] = field(default_factory=list)

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
_SOURCES: dict[Launch, set[str]] = {}  # launch -> {"executor", "grid"}
_BACKENDS: dict[Launch, set[str]] = {}  # executor launches -> {"torch", "paddle"}
_NOW = {"source": "grid", "backend": ""}  # what the recorder tags the next launches with


@functools.cache
def _binder(fn: JITFunction, arch: int):
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    return target, backend, create_function_from_signature(fn.signature, fn.params, backend)


def _specialise(fn: JITFunction, args: tuple, kwargs: dict, arch: int):
    target, backend, binder = _binder(fn, arch)
    kwargs = {"debug": False, **kwargs}
    bound, spec, opts = binder(*args, **kwargs)
    options, sig, constexprs, attrs = fn._pack_args(backend, kwargs, bound, spec, opts)
    return target, sig, constexprs, attrs, options


def _describe(fn: JITFunction, sig: dict, constexprs: dict, attrs: dict, options) -> str:
    names = list(sig)
    consts = {names[p[0]]: v for p, v in constexprs.items()}
    # every runtime argument's type, in order (a set would merge e.g. int32 table with
    # int64 indices and int64 table with int32 indices)
    types = " ".join(t for n, t in sig.items() if t != "constexpr" and n not in consts)
    # pointers and ints Triton could not assume 16-divisible (error counters 8 B apart,
    # odd row counts): each is its own binary
    div16 = {names[p[0]] for p, a in attrs.items() if ["tt.divisibility", 16] in a}
    odd = [
        n
        for n, t in sig.items()
        if (t.startswith("*") or t[0] in "iu") and n not in consts and n not in div16
    ]  # floats are never specialised
    tail = f" not16={odd}" if odd else ""
    return f"{consts} warps={options.num_warps} args=[{types}]{tail}"


def _record(self: JITFunction, *args, grid, warmup, **kwargs):
    for arch in ARCHS:
        target, sig, constexprs, attrs, options = _specialise(self, args, kwargs, arch)
        key = json.dumps(
            [sig, repr(sorted(constexprs.items())), repr(sorted(attrs.items())), options.hash()]
        )
        launch = Launch(self.__name__, arch, key, _describe(self, sig, constexprs, attrs, options))
        _JOBS.setdefault(launch, (self, sig, constexprs, attrs, options))
        _SOURCES.setdefault(launch, set()).add(_NOW["source"])
        if _NOW["backend"]:
            _BACKENDS.setdefault(launch, set()).add(_NOW["backend"])


@contextlib.contextmanager
def recording(source: str, backend: str = "") -> Iterator[None]:
    """Launches inside are recorded (tagged ``source``), never run."""
    original, before = JITFunction.run, dict(_NOW)
    JITFunction.run = _record
    _NOW.update(source=source, backend=backend)
    try:
        yield
    finally:
        JITFunction.run = original
        _NOW.update(before)


# ---- source 1: the executor ---------------------------------------------------------
# Real checkpoints (graphbatch.models): architecture (tests/models/random_decoder.ARCHS
# key, None = llama without rope scaling), heads, kv heads, head_dim, hidden, vocab, tied
REAL_MODELS = {
    "SmolLM2-135M": ("llama3", None, 9, 3, 64, 576, 49152, True),
    "Llama-3.1-8B": ("llama3", "llama3", 32, 8, 128, 4096, 128256, False),
    "Qwen2.5-7B": ("qwen2", "qwen2", 28, 4, 128, 3584, 152064, False),
    "Qwen3-8B": ("qwen3", "qwen3", 32, 8, 128, 4096, 151936, False),
}
# (heads, kv heads, head_dim, hidden, vocab) for the grid
REAL_SHAPES = {n: (h, kv, d, hid, v) for n, (_, _, h, kv, d, hid, v, _) in REAL_MODELS.items()}
REAL_DTYPES = ("float32", "bfloat16")
BLOCK_SIZE = 16  # serving's and the CLI's KV block size
SMALL_MLP = 256  # the MLP launches no kernel: its width only costs time here
STAND_IN_VOCAB = 4096  # + (vocab % 16): the same divisibility as the real vocabulary


class _ShapeOnlyTorch(TorchFunctionMode):
    """Matmuls return zeros of their shape and dtype: no kernel reads a value here, and
    zeros keep the elementwise math that follows off the CPU's slow denormal paths."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name == "linear":
            x, w = args[0], args[1]
            return torch.zeros((*x.shape[:-1], w.shape[0]), dtype=x.dtype, device=x.device)
        if name in ("matmul", "__matmul__", "mm") and args[1].dim() == 2:
            x, w = args[0], args[1]
            return torch.zeros((*x.shape[:-1], w.shape[1]), dtype=x.dtype, device=x.device)
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def _shape_only_matmuls() -> Iterator[None]:
    import paddle

    def mm(x, w, *rest, **kw):
        return paddle.zeros([*x.shape[:-1], w.shape[-1]], dtype=x.dtype)

    patches = [
        (paddle.Tensor, "__matmul__", mm),
        (paddle, "matmul", mm),
        (paddle.nn.functional, "linear", mm),  # paddle weights are [in, out]
    ]
    saved = [(o, n, vars(o)[n]) for o, n, _ in patches]
    for o, n, f in patches:
        setattr(o, n, f)
    try:
        with _ShapeOnlyTorch():
            yield
    finally:
        for o, n, f in saved:
            setattr(o, n, f)


class _LogitsOnly:
    """A model whose forward is the [max_num_seqs, V] fp32 logits a real vocabulary gives:
    the executor's sampler launch at that vocabulary, without the model that makes them."""

    def __init__(self, vocab: int) -> None:
        self.vocab = vocab

    def bind(self, backend, sched) -> None:
        self.logits = backend.empty((sched.max_num_seqs, self.vocab), "float32")

    def forward(self, inp):
        return self.logits


def _sched(vocab: int, budget: int, seqs: int, max_len: int, block_size: int = BLOCK_SIZE):
    from graphbatch.scheduler import SchedulerConfig

    return SchedulerConfig(
        max_num_seqs=seqs,
        max_num_batched_tokens=budget,
        block_size=block_size,
        num_kv_blocks=seqs * math.ceil(max_len / block_size) + 1,  # serving's default
        max_model_len=max_len,
        vocab_size=vocab,
    )


def _decoder(arch: str, rope: str | None, heads, kv, d, hidden, vocab, tied, dtype):
    """A Decoder of the real architecture's shapes, one layer, zero (never read) weights."""
    import numpy as np
    from graphbatch.models import Decoder, ModelConfig
    from graphbatch.models.weights import WeightStore

    from tests.models.random_decoder import ARCHS, hf_shapes

    extra = dict(ARCHS[arch])
    if rope is None:
        extra["rope_scaling"] = None
    cfg = ModelConfig(**{
        **extra, "vocab_size": vocab, "hidden_size": hidden, "num_layers": 1,
        "num_heads": heads, "num_kv_heads": kv, "head_dim": d,
        "intermediate_size": SMALL_MLP, "tie_word_embeddings": tied, "dtype": dtype,
    })  # fmt: skip
    zeros = {n: functools.partial(np.zeros, s, np.float32) for n, s in hf_shapes(cfg).items()}
    return Decoder(cfg, WeightStore(arch, zeros))


def executor_drives() -> list[tuple[str, str, Callable[[], object], object]]:
    """(label, backend, model factory, scheduler config) for every executor drive."""
    from graphbatch.models import TinyDecoder
    from graphbatch.models.tiny import preset
    from graphbatch.serving.config import CHECKPOINT_LIMITS, MODEL_LIMITS

    from tests.executor.helpers import MODEL, SCHED
    from tests.models.random_decoder import random_decoder

    both, torch_only = ("torch", "paddle"), ("torch",)
    drives = []

    def add(label, backends, make, sched):
        drives.extend((label, b, make, sched) for b in backends)

    # the test suite's config (block 8, 4 sequences, 64 tokens): what make test runs
    add("tests: tiny", both, lambda: TinyDecoder(MODEL), SCHED)
    for arch in ("llama3", "qwen2", "qwen3"):
        add(
            f"tests: {arch}", both, functools.partial(random_decoder, arch, SCHED.vocab_size), SCHED
        )
    # the presets at serving's / the CLI's limits
    for name in ("tiny", "small", "large"):
        cfg = preset(name)
        if name == "large":  # one layer, a small MLP, a stand-in vocabulary (see above)
            cfg = preset(name, num_layers=1, intermediate_size=SMALL_MLP,
                         vocab_size=STAND_IN_VOCAB + cfg.vocab_size % 16)  # fmt: skip
        backends = both if cfg.dtype == "float32" else torch_only
        sched = _sched(cfg.vocab_size, *MODEL_LIMITS[name])
        add(f"preset {name}", backends, functools.partial(TinyDecoder, cfg), sched)
        real_vocab = preset(name).vocab_size
        if real_vocab != cfg.vocab_size:
            add(f"preset {name}: sampler", backends, functools.partial(_LogitsOnly, real_vocab),
                _sched(real_vocab, *MODEL_LIMITS[name]))  # fmt: skip
    # real architectures at the checkpoint limits
    for name, (arch, rope, h, kv, d, hidden, vocab, tied) in REAL_MODELS.items():
        stand_in = STAND_IN_VOCAB + vocab % 16
        for dtype in REAL_DTYPES:
            backends = both if dtype == "float32" else torch_only
            make = functools.partial(_decoder, arch, rope, h, kv, d, hidden, stand_in, tied, dtype)
            add(f"{name} {dtype}", backends, make, _sched(stand_in, *CHECKPOINT_LIMITS))
        add(f"{name}: sampler", both, functools.partial(_LogitsOnly, vocab),
            _sched(vocab, *CHECKPOINT_LIMITS))  # fmt: skip
    return drives


def _executor_calls(verbose: bool = False) -> int:
    from graphbatch.executor import GraphExecutor, KVCacheModel

    steps = 0
    with _shape_only_matmuls():
        for label, backend, make, sched in executor_drives():
            t0 = time.perf_counter()
            ex = GraphExecutor(make(), sched, backend, device="cpu", use_cuda_graph=False)
            if isinstance(ex.model, KVCacheModel):  # layer-wise KV transfer: + layer_signal
                ex.enable_layer_flags()
            with recording("executor", backend):
                for bucket in sched.buckets:
                    ex._forward_and_sample(bucket)
            steps += len(sched.buckets)
            if verbose:
                print(f"  executor {label} ({backend}): {len(sched.buckets)} buckets "
                      f"in {time.perf_counter() - t0:.1f} s")  # fmt: skip
            del ex
            gc.collect()
    return steps


# ---- source 2: the launchers' shape grid ---------------------------------------------
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
            call(16, V, dtype)  # per vocabulary and dtype
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


def _layer_signal_calls():
    from graphbatch.kernels import layer_signal

    for layers in (1, 30, 64):  # one config whatever the depth: the layer is an argument
        layer_signal(torch.zeros(1, dtype=torch.int64), torch.zeros(layers, dtype=torch.int64), 0)


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


def record_launches(verbose: bool = False) -> dict[Launch, tuple]:
    t0 = time.perf_counter()
    _executor_calls(verbose)
    t1 = time.perf_counter()
    with recording("grid"):
        _sampler_calls()
        _slot_calls()
        _attention_calls()
        _layer_signal_calls()
    if verbose:
        print(f"recorded: executor {t1 - t0:.0f} s, grid {time.perf_counter() - t1:.0f} s")
    return _JOBS


# ---- compiling -----------------------------------------------------------------------
def _tool(name: str) -> str:
    return os.path.join(os.path.dirname(get_ptxas(80).path), name)


@functools.cache
def _tool_versions() -> str:
    paths = [get_ptxas(a).path for a in ARCHS] + [_tool("cuobjdump")]
    return "|".join(
        subprocess.run([p, "--version"], capture_output=True, text=True).stdout.strip()
        for p in paths
    )


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
        # a register cap (maxnreg) is in the PTX itself, as .maxnreg
        cmd = [get_ptxas(arch).path, "-v", "--gpu-name", gpu, f.name, "-o", os.devnull]
        log = subprocess.run(cmd, capture_output=True, text=True).stderr
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


def _cache_file(cache: str, launch: Launch) -> str:
    fn = _JOBS[launch][0]
    key = json.dumps(
        [GATE_VERSION, triton.__version__, _tool_versions(), fn.cache_key, launch.kernel,
         launch.arch, launch.key]
    )  # fmt: skip
    h = hashlib.sha256(key.encode()).hexdigest()
    return os.path.join(cache, h[:2], h + ".json")


def _load(path: str, launch: Launch) -> Result | None:
    try:
        with open(path) as f:
            fields = json.load(f)
    except (OSError, ValueError):
        return None
    return Result(launch, **{**fields, "cached": True})


def _store(path: str, r: Result) -> None:
    fields = {k: v for k, v in asdict(r).items() if k not in ("launch", "cached", "sources")}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(fields, f)
    os.replace(tmp, path)  # atomic: a concurrent gate never reads half a file


def compile_all(launches: list[Launch], workers: int, cache: str | None = None) -> list[Result]:
    import multiprocessing

    results: dict[Launch, Result] = {}
    if cache:
        for launch in launches:
            r = _load(_cache_file(cache, launch), launch)
            if r is not None:
                results[launch] = r
    todo = [launch for launch in launches if launch not in results]
    if todo:
        ctx = multiprocessing.get_context("fork")  # workers inherit the recorded launches
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            for launch, r in zip(todo, pool.map(compile_launch, todo), strict=True):
                results[launch] = r
                if cache:
                    _store(_cache_file(cache, launch), r)
    out = [results[launch] for launch in launches]
    for r in out:
        r.sources = sorted(_SOURCES.get(r.launch, ()))
    return out


def control() -> dict[str, bool]:
    """Both ways a launch fails the gate, planted; each must be caught.

    compile error: a kernel the interpreter runs but the compiler rejects. spill: a kernel
    that compiles clean for both archs (no cap) and spills under ``maxnreg=32``.
    """
    from control_kernel import retyped_kernel, spilling_kernel

    def compiled(launch_fn) -> list[Result]:
        before = set(_JOBS)
        with recording("control"):
            launch_fn()
        return [compile_launch(launch) for launch in _JOBS if launch not in before]

    x, out = torch.zeros(2 * 1024), torch.zeros(1024)
    errors = compiled(lambda: retyped_kernel[(1,)](torch.zeros(64), 64, BLOCK=32))
    free = compiled(lambda: spilling_kernel[(1,)](x, out, BLOCK=1024, num_warps=1))
    capped = compiled(lambda: spilling_kernel[(1,)](x, out, BLOCK=1024, num_warps=1, maxnreg=32))
    return {
        "compile error": bool(errors)
        and all(r.problem == "compile error" and "CompilationError" in r.error for r in errors),
        "spill": len(free) == len(capped) == len(ARCHS)
        and all(r.ok and not r.problem for r in free)
        and all(r.ok and r.problem.startswith("spills") and r.spill_bytes > 0 for r in capped),
    }


# ---- report -------------------------------------------------------------------------
def counts(results: list[Result]) -> dict[str, dict[str, int]]:
    """Per kernel: distinct configurations (one per arch pair) by source."""
    per: dict[str, dict[str, int]] = {}
    for r in results:
        if r.launch.arch != ARCHS[0]:
            continue
        c = per.setdefault(r.launch.kernel, dict.fromkeys(
            ("configs", "executor", "grid", "both", "executor only", "grid only", "paddle only"), 0
        ))  # fmt: skip
        s = set(r.sources)
        c["configs"] += 1
        c["executor"] += "executor" in s
        c["grid"] += "grid" in s
        c["both"] += s >= {"executor", "grid"}
        c["executor only"] += s == {"executor"}
        c["grid only"] += s == {"grid"}
        c["paddle only"] += _BACKENDS.get(r.launch, set()) == {"paddle"}
    total = {k: sum(c[k] for c in per.values()) for k in next(iter(per.values()), {})}
    return {**dict(sorted(per.items())), "total": total}


def count_table(results: list[Result]) -> str:
    lines = [
        "| kernel | configs | executor-driven | grid | both | executor only | grid only "
        "| compiled (x sm_80, sm_90) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for kernel, c in counts(results).items():
        lines.append(
            f"| {kernel} | {c['configs']} | {c['executor']} | {c['grid']} | {c['both']} "
            f"| {c['executor only']} | {c['grid only']} | {c['configs'] * len(ARCHS)} |"
        )
    return "\n".join(lines)


def table(results: list[Result]) -> str:
    drives = executor_drives()
    labels = sorted({f"{label} ({b})" for label, b, *_ in drives})
    lines = [
        "# Kernel resources (generated by `make gpu-compile`; do not edit)",
        "",
        "Every distinct launch the executor and the launchers make, compiled by Triton "
        f"{triton.__version__} for each arch without a GPU; resources from "
        "`cuobjdump -res-usage` (registers per thread, shared bytes per block, local and "
        "stack bytes per thread) and spill bytes from `ptxas -v`. Sources "
        "(`tests/kernels/gpu_compile.py`): **executor**, `GraphExecutor._forward_and_sample` "
        "for every bucket of each drive below, on torch and Paddle (bf16 on torch: "
        "Paddle's CPU wheel has no bf16 add); **grid**, the launchers called over a shape "
        "grid. A configuration is one Triton binary key (signature, constexprs, "
        "attributes, options); each is compiled for sm_80 and sm_90.",
        "",
        "## Configurations compiled, per kernel and per source",
        "",
        count_table(results),
        "",
        f"Executor drives ({len(drives)}): " + "; ".join(labels) + ".",
        "",
        "## Every launch",
        "",
        "| kernel | source | config | arch | registers | shared B | local B | stack B "
        "| spill B | ok |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in sorted(results, key=lambda r: (r.launch.kernel, r.launch.config, r.launch.arch)):
        cfg = r.launch.config.replace("|", "/")
        status = r.problem or "yes"
        src = "+".join(r.sources)
        lines.append(
            f"| {r.launch.kernel} | {src} | {cfg} | sm_{r.launch.arch} | {r.registers} "
            f"| {r.shared} | {r.local} | {r.stack} | {r.spill_bytes} | {status} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--table", help="write the resource table (markdown) here")
    p.add_argument("--json", help="write per-launch results (json) here")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--control", action="store_true", help="also check the planted failures")
    p.add_argument("--only", help="compile only kernels whose name contains this")
    p.add_argument("--cache", default=DEFAULT_CACHE, help="compile results cache directory")
    p.add_argument("--no-cache", action="store_true", help="compile everything afresh")
    p.add_argument("--verbose", action="store_true", help="time each executor drive")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    launches = [k for k in record_launches(args.verbose) if not args.only or args.only in k.kernel]
    t1 = time.perf_counter()
    results = compile_all(launches, args.workers, None if args.no_cache else args.cache)
    failed = [r for r in results if r.problem]
    kernels = sorted({r.launch.kernel for r in results})
    cached = sum(r.cached for r in results)
    print(
        f"compiled {len(results)} launches ({len(results) // len(ARCHS)} configs x "
        f"sm_{'/sm_'.join(map(str, ARCHS))}; {cached} from the cache) of {kernels}: "
        f"recorded in {t1 - t0:.0f} s, compiled in {time.perf_counter() - t1:.0f} s"
    )
    print(count_table(results))
    paddle_only = counts(results)["total"]["paddle only"]
    print(f"paddle-only configs: {paddle_only}")
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
                     "sources": r.sources, "backends": sorted(_BACKENDS.get(r.launch, ())),
                     "ok": r.ok, "problem": r.problem, "registers": r.registers,
                     "shared": r.shared, "local": r.local, "spill_bytes": r.spill_bytes,
                     "cached": r.cached}
                    for r in results
                ],
                f,
                indent=1,
            )  # fmt: skip
    status = 0 if not failed else 1
    if args.control:
        for kind, caught in control().items():
            print(f"control: planted {kind} caught: {caught}")
            status = status or (0 if caught else 1)
    return status


if __name__ == "__main__":
    sys.exit(main())
