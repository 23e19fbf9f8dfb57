"""Host work per prefill step: graphbatch's scheduler against nano-vllm's, same workloads.

Four shapes at block 16, each with graphbatch's prefix cache on and off, all requests
arriving at once and served to the end (prefill only: each request is done after its
first token). Per step, in microseconds (a phase's total over the run / the run's
steps; median of the repetitions):

- graphbatch: ``add_request`` (admission), ``schedule`` (the descriptor included),
  ``GraphExecutor.check`` (the seal -- a step as issued skips validation; an edited one
  is validated in full -- + the scheduler's record), ``mark_executed`` + ``update``
  (update), ``release``. Also ``StaticBuffers.load`` (staging into the
  executor's buffers, in ``execute``; shown, not in the ratio).
- nano-vllm: ``Scheduler.add`` with its ``Sequence`` (admission), ``schedule``,
  ``ModelRunner.prepare_prefill`` and ``postprocess``, loaded from its own source (see
  ``--nano-vllm``). On a CPU its ``pin_memory=True`` / ``.cuda()`` are dropped from
  ``prepare_prefill`` (the list -> tensor conversions stay); nano-vllm always runs its
  prefix cache, so its column is the same for graphbatch's cache on and off.

ratio = graphbatch (schedule + check + update) / nano-vllm (schedule + prepare_prefill
+ postprocess), per step; "all" adds admission and release to both sides (nano-vllm's
release is inside its postprocess). A and B runs alternate (ABAB), garbage collection
off inside a run.

    python benchmarks/bench_scheduler.py [--nano-vllm DIR] [--reps 41] [--shapes 1,4]

DIR holds nano-vllm's ``nanovllm/`` package (a checkout of GeeeekExplorer/nano-vllm;
default: $NANO_VLLM_SRC, else ~/.cache/graphbatch/nano-vllm). Its modules are read from
there at run time (nothing of it is part of graphbatch); it needs ``xxhash``. Without
them the nano-vllm columns are skipped with the reason.
"""

from __future__ import annotations

import argparse
import ast
import gc
import importlib.util
import os
import sys
import time
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from graphbatch.executor import GraphExecutor
from graphbatch.models import TinyConfig, TinyDecoder
from graphbatch.scheduler import PrefillScheduler, Request, SchedulerConfig, warm_up

BLOCK = 16
VOCAB = 32000
PHASES = ("admission", "schedule", "check", "update", "release", "load")
NANO_PHASES = ("admission", "schedule", "prepare", "postprocess")


@dataclass(frozen=True)
class Shape:
    name: str
    requests: int
    unique: int  # tokens of each request's own
    shared: int = 0  # tokens of a prefix every request starts with
    budget: int = 8192
    max_num_seqs: int = 256

    @property
    def prompt_len(self) -> int:
        return self.shared + self.unique

    def prompts(self, seed: int = 0) -> list[list[int]]:
        rng = np.random.default_rng(seed)
        shared = rng.integers(0, VOCAB, self.shared).tolist()
        return [shared + rng.integers(0, VOCAB, self.unique).tolist() for _ in range(self.requests)]

    def config(self, caching: bool) -> SchedulerConfig:
        blocks_each = -(-self.prompt_len // BLOCK)
        return SchedulerConfig(
            max_num_seqs=self.max_num_seqs,
            max_num_batched_tokens=self.budget,
            block_size=BLOCK,
            num_kv_blocks=self.requests * blocks_each + 1,
            max_model_len=self.prompt_len,
            vocab_size=VOCAB,
            enable_prefix_caching=caching,
            max_num_requests=max(self.requests, 4 * self.max_num_seqs),
        )


SHAPES = (
    Shape("256 x 32", 256, 32),
    Shape("32 x 2048", 32, 2048),
    Shape("2 x 16384 chunked", 2, 16384),
    Shape("64 x (1024 + 64)", 64, 64, shared=1024),
)


# ---- graphbatch ------------------------------------------------------------------------
_EXECUTORS: dict[SchedulerConfig, GraphExecutor] = {}


def executor(cfg: SchedulerConfig) -> GraphExecutor:
    """A tiny model's executor for ``cfg``: check() and load() are what is timed."""
    if cfg not in _EXECUTORS:
        model = TinyConfig(vocab_size=VOCAB, hidden_size=16, num_layers=1, num_heads=1,
                           num_kv_heads=1, intermediate_size=16)  # fmt: skip
        _EXECUTORS[cfg] = GraphExecutor(TinyDecoder(model), cfg, backend="torch", device="cpu")
    return _EXECUTORS[cfg]


def run_graphbatch(cfg: SchedulerConfig, prompts: list[list[int]]) -> tuple[dict, int]:
    ex = executor(cfg)
    t = time.perf_counter
    acc = dict.fromkeys(PHASES, 0.0)
    tokens = np.zeros(cfg.max_num_seqs, dtype=np.int64)
    s = PrefillScheduler(cfg)
    reqs = [Request(f"r{i}", p) for i, p in enumerate(prompts)]
    steps = 0
    t0 = t()
    for r in reqs:
        s.add_request(r)
    acc["admission"] += t() - t0
    while True:
        t0 = t()
        d = s.schedule()
        t1 = t()
        if d is None:
            acc["schedule"] += t1 - t0
            break
        ex.check(d)
        t2 = t()
        ex.buffers.load(d)
        t3 = t()
        d.mark_executed()
        moved = s.update(d, tokens)
        t4 = t()
        for rid in moved:
            s.release(rid)
        t5 = t()
        acc["schedule"] += t1 - t0
        acc["check"] += t2 - t1
        acc["load"] += t3 - t2
        acc["update"] += t4 - t3
        acc["release"] += t5 - t4
        steps += 1
    assert not s.request_ids(), "every request prefilled and released"
    return acc, steps


# ---- nano-vllm, from its source ----------------------------------------------------------
class NanoVLLM:
    """nano-vllm's Sequence, BlockManager and Scheduler modules and its ModelRunner's
    ``prepare_prefill``, loaded from ``root`` (a directory holding ``nanovllm/``)."""

    def __init__(self, root: Path) -> None:
        pkg = root / "nanovllm"
        need = [pkg / "engine" / f for f in ("sequence.py", "block_manager.py", "scheduler.py")]
        need += [pkg / "engine" / "model_runner.py", pkg / "sampling_params.py"]
        need += [pkg / "utils" / "context.py"]
        missing = [str(p) for p in need if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"no nano-vllm source: missing {', '.join(missing)}")
        import xxhash  # noqa: F401  (its block manager's hash; ImportError says so)

        ours = lambda k: k == "nanovllm" or k.startswith("nanovllm.")  # noqa: E731
        saved = {k: v for k, v in sys.modules.items() if ours(k)}
        try:
            for name in ("nanovllm", "nanovllm.engine", "nanovllm.utils"):
                m = types.ModuleType(name)
                m.__path__ = [str(root.joinpath(*name.split(".")))]
                sys.modules[name] = m
            # its config imports transformers for a model directory it is never given here
            cfg = types.ModuleType("nanovllm.config")
            cfg.Config = object
            sys.modules["nanovllm.config"] = cfg
            for name in ("sampling_params", "utils.context", "engine.sequence",
                         "engine.block_manager", "engine.scheduler"):  # fmt: skip
                self._load(f"nanovllm.{name}", pkg.joinpath(*name.split(".")).with_suffix(".py"))
            mods = sys.modules
            self.Sequence = mods["nanovllm.engine.sequence"].Sequence
            self.Scheduler = mods["nanovllm.engine.scheduler"].Scheduler
            self.SamplingParams = mods["nanovllm.sampling_params"].SamplingParams
            self.runner = self._runner(pkg / "engine" / "model_runner.py", mods)
        finally:
            for k in [k for k in sys.modules if ours(k)]:
                del sys.modules[k]
            sys.modules.update(saved)

    @staticmethod
    def _load(name: str, path: Path) -> None:
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)

    @staticmethod
    def _runner(path: Path, mods) -> object:
        """An object with ModelRunner's prepare_prefill and prepare_block_tables, their
        source as written but for the pinned host buffer and the copy to a GPU."""

        class HostOnly(ast.NodeTransformer):
            def visit_Call(self, node):
                self.generic_visit(node)
                node.keywords = [k for k in node.keywords if k.arg != "pin_memory"]
                f = node.func
                if isinstance(f, ast.Attribute) and f.attr == "cuda":
                    return f.value  # x.cuda(non_blocking=True) -> x
                return node

        tree = ast.parse(path.read_text())
        cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ModelRunner")
        wanted = {"prepare_prefill", "prepare_block_tables"}
        funcs = [n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name in wanted]
        if {f.name for f in funcs} != wanted:
            raise FileNotFoundError(f"{path} has no ModelRunner.{' / '.join(sorted(wanted))}")
        module = ast.fix_missing_locations(HostOnly().visit(ast.Module(funcs, [])))
        import torch

        ns = {"torch": torch, "set_context": mods["nanovllm.utils.context"].set_context}
        exec(compile(module, str(path), "exec"), ns)  # noqa: S102
        runner = type("HostModelRunner", (), {n: ns[n] for n in wanted})()
        runner.block_size = BLOCK
        return runner

    def run(self, cfg: SchedulerConfig, prompts: list[list[int]]) -> tuple[dict, int]:
        t = time.perf_counter
        acc = dict.fromkeys(NANO_PHASES, 0.0)
        self.Sequence.block_size = BLOCK
        conf = types.SimpleNamespace(
            max_num_seqs=cfg.max_num_seqs,
            max_num_batched_tokens=cfg.max_num_batched_tokens,
            eos=-1,
            kvcache_block_size=BLOCK,
            num_kvcache_blocks=cfg.num_kv_blocks,
        )
        sched = self.Scheduler(conf)
        sp = self.SamplingParams(temperature=1.0, max_tokens=1)  # prefill only
        steps = 0
        t0 = t()
        for p in prompts:
            sched.add(self.Sequence(p, sp))
        acc["admission"] += t() - t0
        while not sched.is_finished():
            t0 = t()
            seqs, is_prefill = sched.schedule()
            t1 = t()
            assert is_prefill
            self.runner.prepare_prefill(seqs)
            t2 = t()
            sched.postprocess(seqs, [0] * len(seqs), is_prefill)
            t3 = t()
            acc["schedule"] += t1 - t0
            acc["prepare"] += t2 - t1
            acc["postprocess"] += t3 - t2
            steps += 1
        return acc, steps


def load_nano(path: str | None) -> tuple[NanoVLLM | None, str]:
    root = Path(
        path
        or os.environ.get("NANO_VLLM_SRC")
        or Path.home() / ".cache" / "graphbatch" / "nano-vllm"
    ).expanduser()
    try:
        return NanoVLLM(root), f"nano-vllm from {root}"
    except (FileNotFoundError, ImportError, StopIteration) as e:
        return None, (
            f"nano-vllm columns skipped: {e}. Pass --nano-vllm DIR (a checkout of "
            "GeeeekExplorer/nano-vllm, the directory that holds nanovllm/) or set "
            "NANO_VLLM_SRC; nano-vllm's block manager also needs `pip install xxhash`."
        )


# ---- the run ------------------------------------------------------------------------------
def timed(fn, *args) -> tuple[dict, int]:
    gc.collect()
    gc.disable()
    try:
        return fn(*args)
    finally:
        gc.enable()


def per_step(runs: list[tuple[dict, int]]) -> tuple[dict, int]:
    """Median over repetitions of each phase's microseconds per step."""
    steps = runs[0][1]
    med = {k: float(np.median([a[k] / s for a, s in runs])) * 1e6 for k in runs[0][0]}
    tot = [sum(a[k] for k in ("schedule", "check", "update") if k in a) / s for a, s in runs]
    med["step"] = float(np.median(tot)) * 1e6
    return med, steps


def bench(shape: Shape, caching: bool, nano: NanoVLLM | None, reps: int):
    cfg, prompts = shape.config(caching), shape.prompts()
    gb, nv = [], []
    for _ in range(reps):  # A B A B ...
        gb.append(timed(run_graphbatch, cfg, prompts))
        if nano is not None:
            nv.append(timed(nano.run, cfg, prompts))
    g = per_step(gb)
    n = None
    if nano is not None:
        n_runs = [({**a, "all": sum(a.values())}, s) for a, s in nv]
        n = per_step(n_runs)
        n[0]["step"] = (
            float(np.median([(a["schedule"] + a["prepare"] + a["postprocess"]) / s for a, s in nv]))
            * 1e6
        )
    return g, n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nano-vllm", default=None, help="directory holding nano-vllm's nanovllm/")
    p.add_argument("--reps", type=int, default=41)
    p.add_argument("--shapes", default="1,2,3,4", help="which shapes (1-4), comma-separated")
    args = p.parse_args()
    nano, where = load_nano(args.nano_vllm)
    print(where)
    warm_up()  # graphbatch's compiled loops loaded (compiled, the first time) before timing
    chosen = [SHAPES[int(i) - 1] for i in args.shapes.split(",")]
    head = (
        f"{'shape (block 16)':<19} {'cache':<5} {'steps':>5} "
        + " ".join(f"{k:>9}" for k in PHASES)
        + f" {'sch+chk+upd':>11}"
    )
    if nano is not None:
        head += f" | {'steps':>5} {'schedule':>9} {'prepare':>9} {'postproc':>9} {'total':>9}"
        head += f" | {'ratio':>6} {'all':>6}"
    print("microseconds per step (median of", args.reps, "runs); graphbatch | nano-vllm | ratio")
    print(head)
    for shape in chosen:
        for caching in (True, False):
            (g, gs), n = bench(shape, caching, nano, args.reps)
            line = (
                f"{shape.name:<19} {'on' if caching else 'off':<5} {gs:>5} "
                + " ".join(f"{g[k]:>9.1f}" for k in PHASES)
                + f" {g['step']:>11.1f}"
            )
            if n is not None:
                (nd, ns) = n
                line += (
                    f" | {ns:>5} {nd['schedule']:>9.1f} {nd['prepare']:>9.1f} "
                    f"{nd['postprocess']:>9.1f} {nd['step']:>9.1f}"
                )
                g_all = g["step"] + (g["admission"] + g["release"])
                n_all = nd["all"]
                line += f" | {g['step'] / nd['step']:>6.3f} {g_all / n_all:>6.3f}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
