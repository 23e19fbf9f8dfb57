from __future__ import annotations

import os

import graphbatch.kernels  # noqa: F401  (interpreter choice before tensors are built)
import numpy as np
from graphbatch.executor import GraphExecutor
from graphbatch.kernels._runtime import HAS_TORCH
from graphbatch.models import TinyConfig, TinyDecoder
from graphbatch.scheduler import PrefillScheduler, Request, SamplingParams, SchedulerConfig

MODEL = TinyConfig(
    vocab_size=512, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64
)
SCHED = SchedulerConfig(
    max_num_seqs=4,
    max_num_batched_tokens=64,
    block_size=8,
    num_kv_blocks=48,
    max_model_len=128,
    vocab_size=512,
)


def backends() -> list[str]:
    """The frameworks installed here: torch unless this is the Paddle-only venv."""
    out = ["torch"] if HAS_TORCH else []
    try:
        import paddle  # noqa: F401

        out.append("paddle")
    except ImportError:
        pass
    return out


# The backend of tests that run one: GRAPHBATCH_TEST_BACKEND (``make test`` sets paddle in
# its Paddle-only venv), else torch.
DEFAULT_BACKEND = os.environ.get("GRAPHBATCH_TEST_BACKEND") or ("torch" if HAS_TORCH else "paddle")


def make_executor(backend: str, **kw) -> GraphExecutor:
    return GraphExecutor(
        TinyDecoder(MODEL), SCHED, backend=backend, device=kw.pop("device", None), **kw
    )


def requests(specs, seed=0) -> list[Request]:
    """specs: (id, prompt_len, SamplingParams kwargs)."""
    rng = np.random.default_rng(seed)
    return [
        Request(rid, rng.integers(0, SCHED.vocab_size, n).tolist(), SamplingParams(**sp))
        for rid, n, sp in specs
    ]


def scheduler_with(reqs) -> PrefillScheduler:
    s = PrefillScheduler(SCHED)
    for r in reqs:
        s.add_request(r)
    return s
