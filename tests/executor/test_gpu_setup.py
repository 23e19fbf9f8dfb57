"""What a GPU install needs, checked on a CPU: Paddle >= 3 (a 2.x from PyPI is refused
with the command that fixes it), and Paddle launches on the tensor's own GPU."""

from __future__ import annotations

import contextlib

import pytest
import torch
from graphbatch.executor.backends import BackendUnavailable
from graphbatch.executor.backends.paddle_backend import (
    PADDLE_GPU_INSTALL,
    PaddleBackend,
    check_paddle_version,
)
from graphbatch.kernels import _runtime as rt


@pytest.mark.parametrize("version", ["2.6.2", "2.5.0", "1.8.5"])
def test_a_paddle_older_than_3_is_refused_naming_the_fix(version, monkeypatch):
    paddle = pytest.importorskip("paddle")
    monkeypatch.setattr(paddle, "__version__", version)
    with pytest.raises(BackendUnavailable) as e:
        PaddleBackend("cpu")
    msg = str(e.value)
    assert f"paddle {version} is too old" in msg and "Paddle >= 3" in msg
    assert PADDLE_GPU_INSTALL in msg
    assert "-i https://www.paddlepaddle.org.cn/packages/stable/cu126/" in PADDLE_GPU_INSTALL


@pytest.mark.parametrize("version", ["3.0.0", "3.0.0b2", "3.3.1", "4.1.0", "0.0.0"])
def test_paddle_3_and_development_builds_pass(version):
    check_paddle_version(version)  # 0.0.0: a source build of develop


def test_the_installed_paddle_passes():
    paddle = pytest.importorskip("paddle")
    assert PaddleBackend("cpu").device == "cpu", paddle.__version__


def test_a_paddle_tensor_on_gpu_n_launches_on_that_gpus_stream(monkeypatch):
    # no GPU here: a paddle tensor on gpu:1 is faked, and what launch_stream asks of
    # paddle (the stream of gpu:1, not of paddle's current device) and hands torch
    # (ExternalStream(handle, device=1), not torch's current device) is recorded
    paddle = pytest.importorskip("paddle")

    class Place:
        def is_gpu_place(self):
            return True

        def gpu_device_id(self):
            return 1

    fake = type("Tensor", (), {"__module__": "paddle.fake", "place": Place()})()
    asked = {}

    class Stream:
        def __cuda_stream__(self):
            return (0, 0xABC)

    def current_stream(device=None):
        asked["paddle stream of"] = device
        return Stream()

    def external(handle, device=None, **kw):
        asked["torch stream"] = (handle, device)
        return "external"

    monkeypatch.setattr(paddle.device, "current_stream", current_stream)
    monkeypatch.setattr(torch.cuda, "ExternalStream", external)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext(s))
    monkeypatch.setattr(rt, "interpreting", lambda: False)
    with rt.launch_stream(fake) as s:
        assert s == "external"
    assert asked == {"paddle stream of": "gpu:1", "torch stream": (0xABC, 1)}
