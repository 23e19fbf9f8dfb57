"""Without torch, the launchers hand Triton paddle tensors, not torch views (the GPU path
of a Paddle-only install). Triton must specialise them exactly as the torch views the
compile gate recorded: same argument types, same 16-byte alignment keys, so the same
binaries. Proved here per launcher by recording what reaches ``run`` both ways."""

from __future__ import annotations

import numpy as np
import pytest
from graphbatch.kernels import _runtime as rt
from graphbatch.kernels import gather_slots, layer_signal, scatter_slots, top_p_sample
from graphbatch.kernels.paged_attention import paged_attention

paddle = pytest.importorskip("paddle")
torch = pytest.importorskip("torch")
from triton._C.libtriton import native_specialize_impl  # noqa: E402
from triton.backends.compiler import BaseBackend  # noqa: E402
from triton.runtime.interpreter import InterpretedFunction  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

SWITCHES_CPU_KERNELS = True  # this module picks the path itself


def _key(x):
    if rt.is_paddle(x) or isinstance(x, torch.Tensor):
        return native_specialize_impl(BaseBackend, x, False, True, True)
    return ("value", repr(x))


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "int32", "int64", "uint8"])
def test_a_paddle_tensor_specialises_like_its_torch_view(dtype):
    p = paddle.zeros([8, 4], dtype=dtype)
    assert _key(p) == _key(rt.to_torch(p, "p"))
    assert _key(p[1:]) == _key(rt.to_torch(p, "p")[1:])  # 16 B off: not divisible, both


def _record(monkeypatch, direct: bool) -> tuple[list[tuple], set[str]]:
    """What each launch hands ``run``, as Triton's specialisation keys, and the
    frameworks of the tensors handed."""
    calls: list[tuple] = []
    frameworks: set[str] = set()

    def run(self, *args, grid, warmup=False, **kwargs):
        name = getattr(self, "__name__", None) or self.fn.__name__
        calls.append((name, tuple(_key(a) for a in args), tuple(sorted(kwargs.items()))))
        frameworks.update(type(a).__module__.split(".")[0] for a in args if hasattr(a, "dtype"))

    for cls in (JITFunction, InterpretedFunction):
        monkeypatch.setattr(cls, "run", run)
    monkeypatch.setenv(rt.CPU_KERNELS_ENV, "triton")
    if direct:  # what a Paddle-only install does: no torch view, no native path
        monkeypatch.setattr(rt, "HAS_TORCH", False)
        monkeypatch.setattr(rt, "use_native", lambda a: False)
    _launch_every_kernel()
    return calls, frameworks


def _launch_every_kernel() -> None:
    rng = np.random.default_rng(0)

    def t(a):
        return paddle.to_tensor(a)

    err = t(np.array([0, 2**31 - 1], np.int32))
    for dtype in ("float32", "bfloat16"):
        table = paddle.zeros([64, 2, 16], dtype=dtype)
        idx = t(rng.integers(-1, 64, 7).astype(np.int64))
        gather_slots(table, idx, error_counter=err)
        scatter_slots(table, idx, paddle.zeros([7, 2, 16], dtype=dtype), error_counter=err)
        q = paddle.zeros([6, 4, 16], dtype=dtype)
        paged_attention(
            q, table, table, t(np.array([[1, 2], [3, -1]], np.int32)),
            t(np.array([0, 4, 6], np.int32)), t(np.array([20, 2], np.int32)),
            t(np.array([16, 17, 18, 19, 0, 1], np.int64)), 16, 0.25, error_counter=err,
        )  # fmt: skip
    S = 3
    top_p_sample(
        t(rng.standard_normal((S, 50)).astype(np.float32)),
        t(np.ones(S, np.float32)), t(np.full(S, 0.9, np.float32)), t(np.zeros(S, np.int32)),
        t(np.arange(S, dtype=np.int64)), t(np.zeros(S, np.int64)), S,
        error_counter=err, logprobs=paddle.zeros([S], dtype="float32"),
    )  # fmt: skip
    layer_signal(t(np.array([5], np.int64)), t(np.full(2, -1, np.int64)), 1)


def test_every_launcher_hands_triton_paddle_tensors_that_specialise_like_torch_views(
    monkeypatch,
):
    via_torch, views = _record(monkeypatch, direct=False)
    direct, tensors = _record(monkeypatch, direct=True)
    assert views == {"torch"} and tensors == {"paddle"}
    assert len(via_torch) == 8 and direct == via_torch


def test_without_torch_triton_launches_on_paddles_stream_of_the_tensors_device(monkeypatch):
    """The glue only (a GPU confirms the stream itself, docs/gpu-notes.md): Triton's
    driver hooks answer with Paddle's current stream of the launching tensor's device."""
    import types

    import triton.runtime

    class Stream:
        def __init__(self, place):
            self.place = place

        def __cuda_stream__(self):
            return (2, 1000 + int(self.place.split(":")[1]))

    active = types.SimpleNamespace()
    monkeypatch.setattr(triton.runtime, "driver", types.SimpleNamespace(active=active))
    monkeypatch.setattr(rt, "_pinned_driver", None)
    monkeypatch.setattr(paddle.device, "current_stream", Stream)
    monkeypatch.setattr(paddle.device, "get_device", lambda: "gpu:1")
    with rt._paddle_launch(3):
        d = rt._paddle_driver()
        assert d is active and d.get_current_device() == 3
        assert d.get_current_stream(d.get_current_device()) == 1003
    assert d.get_current_device() == 1  # outside a launch: paddle's current device
    assert d.get_current_stream(1) == 1001
