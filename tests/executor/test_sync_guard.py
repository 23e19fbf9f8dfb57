"""The captured region is sync-free: GraphExecutor._forward_and_sample under HostSyncGuard.

On a GPU this callable is what each CUDA graph captures; a host sync inside it breaks
the capture or bakes one step's values into every replay. On the CPU the guard raises
at every operation that would sync, so these tests prove it for every bucket, on both
backends (torch and Paddle), for the tiny model and the real decoder architectures.

The controls: every class of host sync, planted in a model's forward and in a backend
method, on each framework, raises ``HostSyncError``; the same operations run fine
unguarded, and sync-free operations pass under the guard.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from graphbatch.executor import GraphExecutor
from graphbatch.executor.backends.paddle_backend import PaddleBackend
from graphbatch.executor.backends.torch_backend import TorchBackend
from graphbatch.executor.sync_guard import HostSyncError, HostSyncGuard
from graphbatch.kernels import top_p_sample
from graphbatch.models import TinyDecoder

from ..models.random_decoder import random_decoder
from .helpers import MODEL, SCHED, backends, requests, scheduler_with

# Launches Triton kernels on CPU tensors: the interpreter, on a GPU machine too.
pytestmark = pytest.mark.usefixtures("interpreter")
BACKENDS = backends()
HAS_PADDLE = "paddle" in BACKENDS


@pytest.fixture(autouse=True)
def _triton_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    # The guard proves the captured (GPU) region, and a GPU always runs the Triton
    # kernels; the native CPU path reads values on the host (num_valid, row sets) by design.
    monkeypatch.setenv("GRAPHBATCH_CPU_KERNELS", "triton")


# ---- the whole captured step ----------------------------------------------------------
def _model(name: str):
    if name == "tiny":
        return TinyDecoder(MODEL)
    if name == "smollm2-like":  # tied embeddings, 3 query heads per KV head, head_dim 64
        return random_decoder(
            "llama3", SCHED.vocab_size, rope_scaling=None, tie_word_embeddings=True,
            num_heads=3, num_kv_heads=1, head_dim=64,
        )  # fmt: skip
    return random_decoder(name, SCHED.vocab_size)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("model", ["tiny", "llama3", "qwen2", "qwen3", "smollm2-like"])
def test_captured_step_is_sync_free_for_every_bucket(model, backend):
    # tiny: the reference decoder; the others the real decoder (RoPE gathers, fused QKV,
    # QKV bias, q/k norm, tied head) with random weights, as a checkpoint would load it
    ex = GraphExecutor(_model(model), SCHED, backend=backend, device="cpu")
    ex.enable_layer_flags()  # the step a layer-wise KV transfer captures: + layer signals
    s = scheduler_with(requests([("a", 50, {"top_p": 0.9, "min_p": 0.1}), ("b", 9, {"top_k": 3})]))
    ex.buffers.load(s.schedule())  # real rows and padding rows in the buffers
    for bucket in SCHED.buckets:
        with HostSyncGuard():
            ex._forward_and_sample(bucket)


# ---- controls: every class of sync, planted in a model and in a backend ------------------
# host reads both frameworks spell the same way
_TENSOR_PLANTS = {
    "item": lambda b, x: x.sum().item(),
    "tolist": lambda b, x: x.tolist(),
    "bool": lambda b, x: bool((x > 0).any()),
    "int": lambda b, x: int(x[0]),
    "float": lambda b, x: float(x[0]),
    "numpy": lambda b, x: x.numpy(),
    "np.asarray": lambda b, x: np.asarray(x),
    "cpu": lambda b, x: x.cpu(),
    "to('cpu')": lambda b, x: x.to("cpu"),
    "to(device='cpu')": lambda b, x: x.to(device="cpu"),
}


def _torch_plants():
    return {
        **_TENSOR_PLANTS,
        "nonzero": lambda b, x: torch.nonzero(x > 100),
        "mask": lambda b, x: x[x > 100],
        "mask-assign": lambda b, x: x.clone().__setitem__(x > 100, 0),
        "masked_select": lambda b, x: torch.masked_select(x, x > 100),
        "unique": lambda b, x: torch.unique(x),
        "cuda.synchronize": lambda b, x: torch.cuda.synchronize(),
        "backend.synchronize": lambda b, x: b.synchronize(),
        "backend.to_numpy": lambda b, x: b.to_numpy(x),
    }


def _paddle_plants():
    import paddle

    return {
        **_TENSOR_PLANTS,
        "nonzero": lambda b, x: paddle.nonzero(x > 100),
        "Tensor.nonzero": lambda b, x: (x > 100).nonzero(),
        "where(cond)": lambda b, x: paddle.where(x > 100),
        "mask": lambda b, x: x[x > 100],
        "mask-assign": lambda b, x: x.clone().__setitem__(x > 100, 0),
        "tensor slice bound": lambda b, x: x[x[0] :],
        "masked_select": lambda b, x: paddle.masked_select(x, x > 100),
        "unique": lambda b, x: paddle.unique(x),
        "device.synchronize": lambda b, x: paddle.device.synchronize(),
        "backend.synchronize": lambda b, x: b.synchronize(),
        "backend.to_numpy": lambda b, x: b.to_numpy(x),
    }


# these need a GPU to run at all (a CPU build raises): proved only under the guard here
NEEDS_GPU = {"cuda.synchronize", "device.synchronize"}
PLANTS = {"torch": _torch_plants}
if HAS_PADDLE:
    PLANTS["paddle"] = _paddle_plants
CASES = [(fw, name) for fw, make in PLANTS.items() for name in make()]


class _Planted:
    """Mixin: ``plant(backend, positions)`` runs at the start of the hooked call."""

    plant = None

    def _run_plant(self, b, x):
        if self.plant is not None:
            self.plant(b, x)


class _PlantedModel(_Planted, TinyDecoder):
    def forward(self, inp):
        self._run_plant(self.backend, inp.positions)
        return super().forward(inp)


class _PlantedTorch(_Planted, TorchBackend):
    def cast(self, x, dtype):  # the model's first backend call after the embedding
        self._run_plant(self, x.flatten())
        return super().cast(x, dtype)


class _PlantedPaddle(_Planted, PaddleBackend):
    def cast(self, x, dtype):
        self._run_plant(self, x.flatten())
        return super().cast(x, dtype)


_EXECUTORS: dict[str, GraphExecutor] = {}


def _planted_executor(fw: str) -> GraphExecutor:
    if fw not in _EXECUTORS:
        backend = (_PlantedTorch if fw == "torch" else _PlantedPaddle)("cpu")
        _EXECUTORS[fw] = GraphExecutor(_PlantedModel(MODEL), SCHED, backend=backend)
    ex = _EXECUTORS[fw]
    if fw == "paddle":
        ex.backend.paddle.set_device("cpu")  # another test's backend may have moved it
    return ex


@pytest.mark.parametrize("where", ["model.forward", "backend.cast"])
@pytest.mark.parametrize("fw, how", CASES)
def test_a_sync_planted_in_a_model_or_a_backend_raises(fw, how, where):
    ex = _planted_executor(fw)
    plant = PLANTS[fw]()[how]
    x = ex.buffers.view(SCHED.buckets[0]).positions
    if how not in NEEDS_GPU:
        plant(ex.backend, x)  # a valid operation: it runs unguarded
    target = ex.model if where == "model.forward" else ex.backend
    target.plant = plant
    try:
        with pytest.raises(HostSyncError), HostSyncGuard():
            ex._forward_and_sample(SCHED.buckets[0])
    finally:
        target.plant = None


def _torch_sync_free():
    a, i = torch.arange(12.0).reshape(3, 4), torch.tensor([2, 0])
    return {
        "matmul": lambda: a @ a.T,
        "integer index": lambda: a[i],
        "index_select": lambda: a.index_select(0, i),
        "slice": lambda: a[1:, :2],
        "where": lambda: torch.where(a > 3, a, 0.0),
        "masked_fill": lambda: a.masked_fill(a > 3, 0.0),
        "to(dtype)": lambda: a.to(torch.float16),
        "to(other on the host) from the host": lambda: a.to(i),
        "cat": lambda: torch.cat([a, a]),
        "copy_": lambda: a.clone().copy_(a),
        "shape": lambda: a.shape[0] + a.numel(),
    }


def _paddle_sync_free():
    import paddle

    a = paddle.arange(12, dtype="float32").reshape([3, 4])
    i = paddle.to_tensor(np.array([2, 0]))
    return {
        "matmul": lambda: a @ a.T,
        "integer index": lambda: a[i],
        "index_select": lambda: paddle.index_select(a, i),
        "slice": lambda: a[1:, :2],
        "slice assign": lambda: a.clone().__setitem__((slice(0, 1),), 0.0),
        "where": lambda: paddle.where(a > 3, a, paddle.zeros_like(a)),
        "masked_fill": lambda: paddle.masked_fill(a, a > 3, 0.0),
        "to(dtype)": lambda: a.to("float16"),
        "astype": lambda: a.astype("int32"),
        "assign": lambda: paddle.assign(a, output=paddle.empty([3, 4])),
        "concat": lambda: paddle.concat([a, a]),
        "shape": lambda: a.shape[0] + len(a),
    }


FREE = {"torch": _torch_sync_free}
if HAS_PADDLE:
    FREE["paddle"] = _paddle_sync_free


@pytest.mark.parametrize("fw", list(FREE))
def test_sync_free_operations_pass_under_the_guard(fw):
    for name, op in FREE[fw]().items():
        with HostSyncGuard():
            op()  # raises HostSyncError naming the op if the guard is too eager
        assert name


def test_a_copy_from_another_device_to_the_host_raises():
    # torch's meta device stands in for a GPU: the implied-target copies raise only when
    # the source is off the host; explicit host copies raise from any device
    meta, host = torch.empty(4, device="meta"), torch.zeros(4)
    for copy in (
        lambda: meta.to(host),
        lambda: host.copy_(meta),
        lambda: meta.to("cpu"),
        lambda: meta.cpu(),
    ):
        with pytest.raises(HostSyncError), HostSyncGuard():
            copy()
    with HostSyncGuard():
        host.to(torch.zeros(2, dtype=torch.int64))  # host to host: no sync
        meta.to(torch.float16)  # stays on its device


def test_the_guard_watches_only_its_own_thread_and_restores_everything():
    x = torch.arange(4)
    originals = [torch.cuda.synchronize, TorchBackend.to_numpy]
    if HAS_PADDLE:
        import paddle

        p = paddle.arange(4)
        originals += [paddle.Tensor.numpy, paddle.Tensor.__float__, paddle._C_ops.nonzero]
    inside, done, seen = threading.Event(), threading.Event(), []

    def other_thread():
        inside.wait()
        seen.append(x.tolist())  # not under a guard: a host read is fine here
        if HAS_PADDLE:
            seen.append(p.numpy().tolist())
        done.set()

    t = threading.Thread(target=other_thread)
    t.start()
    with HostSyncGuard():
        with HostSyncGuard():  # guards nest
            inside.set()
            assert done.wait(30)
        with pytest.raises(HostSyncError):
            x.tolist()
        if HAS_PADDLE:
            with pytest.raises(HostSyncError):
                p.numpy()
    t.join()
    assert seen[0] == [0, 1, 2, 3]
    current = [torch.cuda.synchronize, TorchBackend.to_numpy]
    if HAS_PADDLE:
        current += [paddle.Tensor.numpy, paddle.Tensor.__float__, paddle._C_ops.nonzero]
        assert p.numpy().tolist() == [0, 1, 2, 3]
    assert all(a is b for a, b in zip(originals, current, strict=True))


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
