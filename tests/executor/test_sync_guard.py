"""The captured region is sync-free: GraphExecutor._forward_and_sample under HostSyncGuard.

On a GPU this callable is what each CUDA graph captures; a host sync inside it breaks
the capture or bakes one step's values into every replay. On the CPU the guard raises
at every operation that would sync, so these tests prove it for every bucket.
"""

from __future__ import annotations

import pytest
import torch
from graphbatch.executor.sync_guard import HostSyncError, HostSyncGuard
from graphbatch.kernels import top_p_sample
from graphbatch.models import TinyDecoder

from .helpers import MODEL, SCHED, make_executor, requests, scheduler_with


@pytest.fixture(autouse=True)
def _triton_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    # The guard proves the captured (GPU) region, and a GPU always runs the Triton
    # kernels; the native CPU path reads values on the host (num_valid, row sets) by design.
    monkeypatch.setenv("GRAPHBATCH_CPU_KERNELS", "triton")


def test_captured_callable_is_sync_free_for_every_bucket():
    ex = make_executor("torch")
    s = scheduler_with(requests([("a", 50, {"top_p": 0.9, "min_p": 0.1}), ("b", 9, {})]))
    ex.buffers.load(s.schedule())  # real rows and padding rows in the buffers
    for bucket in SCHED.buckets:
        with HostSyncGuard():
            ex._forward_and_sample(bucket)


@pytest.mark.parametrize("backend", ["torch", "paddle"])
@pytest.mark.parametrize("arch", ["llama3", "qwen2", "qwen3"])
def test_real_architectures_are_sync_free_for_every_bucket(arch, backend):
    # the real decoder (RoPE gathers, fused QKV, q/k norm, tied head) on the Triton path:
    # its kernels see only torch views, so the guard watches them on both backends
    from graphbatch.executor import GraphExecutor

    from ..models.random_decoder import random_decoder

    ex = GraphExecutor(random_decoder(arch, SCHED.vocab_size), SCHED, backend=backend)
    s = scheduler_with(requests([("a", 50, {"top_p": 0.9}), ("b", 9, {"top_k": 3})]))
    ex.buffers.load(s.schedule())
    for bucket in SCHED.buckets:
        with HostSyncGuard():
            ex._forward_and_sample(bucket)


class _PlantedSync(TinyDecoder):
    def __init__(self, how: str) -> None:
        super().__init__(MODEL)
        self.how = how

    def forward(self, inp):
        logits = super().forward(inp)
        if self.how == "item":
            logits = logits * (1.0 if logits.sum().item() != 0 else 2.0)
        elif self.how == "bool":
            logits = logits if bool((logits > 0).any()) else -logits
        elif self.how == "nonzero":
            logits[torch.nonzero(logits > 100)] = 0.0
        elif self.how == "mask":
            logits[logits > 100] = 0.0  # boolean-mask assignment: a data-dependent index
        elif self.how == "numpy":
            logits = logits + float(logits.detach().numpy().max())
        return logits


@pytest.mark.parametrize("how", ["item", "bool", "nonzero", "mask", "numpy"])
def test_guard_catches_a_sync_planted_in_the_model(how):
    from graphbatch.executor import GraphExecutor

    ex = GraphExecutor(_PlantedSync(how), SCHED, backend="torch")
    ex._forward_and_sample(SCHED.buckets[0])  # runs fine unguarded
    with pytest.raises(HostSyncError), HostSyncGuard():
        ex._forward_and_sample(SCHED.buckets[0])


def test_guard_catches_the_launchers_value_check():
    # check_values reads the parameters on the host: exactly what must stay off in capture
    S, V = 4, 32
    f = lambda v, dt: torch.full((S,), v, dtype=dt)  # noqa: E731
    args = (torch.zeros(S, V), f(1.0, torch.float32), f(1.0, torch.float32))
    args += (f(0, torch.int32), f(0, torch.int64), f(0, torch.int64), S)
    with HostSyncGuard():
        top_p_sample(*args, check_values=False)
        with pytest.raises(HostSyncError):
            top_p_sample(*args, check_values=True)


def test_integer_indexing_is_not_a_sync():
    x, idx = torch.arange(10.0), torch.tensor([1, 3])
    with HostSyncGuard():
        y = x[idx] * 2
    assert y.tolist() == [2.0, 6.0]
