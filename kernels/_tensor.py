"""What a launcher needs to know of a kernel argument, asked of its own framework.

The launchers validate torch and paddle tensors alike through ``Arg``: shape, dtype and
device in one spelling (dtype ``"float32"``, device ``"cpu"`` / ``"cuda:N"`` /
``"meta"``), contiguity, strides. Nothing here imports torch or paddle: a tensor is
recognised by its class's module, so a Paddle-only install never loads torch.
"""

from __future__ import annotations

from typing import Any


def framework(x: Any) -> str | None:
    """ "torch", "paddle", or None for anything else."""
    module = type(x).__module__
    if module.startswith("torch"):
        return "torch"
    if module.startswith("paddle"):
        return "paddle"
    return None


def _paddle_device(place: Any) -> str:
    if place.is_gpu_place():
        return f"cuda:{place.gpu_device_id()}"
    if place.is_cpu_place() or place.is_cuda_pinned_place():
        return "cpu"
    raise ValueError(f"unsupported paddle place {place}")


class Arg:
    """One kernel argument: the tensor (``x``), its framework and its facts.

    ``device`` is where the data lives for a kernel: a pinned host tensor is "cpu" with
    ``pinned`` set (a GPU kernel can still write it).
    """

    __slots__ = ("x", "name", "fw", "shape", "dtype", "device", "pinned")

    def __init__(self, x: Any, name: str) -> None:
        fw = framework(x)
        if fw is None:
            raise TypeError(f"{name} must be a torch or paddle tensor, got {type(x).__name__}")
        self.x, self.name, self.fw = x, name, fw
        self.shape = tuple(int(s) for s in x.shape)
        self.dtype = str(x.dtype).rpartition(".")[2]
        if fw == "torch":
            d = x.device
            self.device = d.type if d.index is None or d.type == "cpu" else f"{d.type}:{d.index}"
            self.pinned = d.type == "cpu" and bool(x.is_pinned())
        else:
            place = x.place
            self.device = _paddle_device(place)
            self.pinned = bool(place.is_cuda_pinned_place())

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def on_gpu(self) -> bool:
        return self.device.startswith("cuda")

    def contiguous(self) -> bool:
        return bool(self.x.is_contiguous())

    def stride(self, dim: int) -> int:
        """Elements between neighbours along ``dim``."""
        if self.fw == "torch":
            return int(self.x.stride(dim))
        return int(self.x.strides[dim])

    def require(
        self,
        *,
        ndim: int | None = None,
        shape: tuple[int, ...] | None = None,
        dtypes: tuple[str, ...] | None = None,
        contiguous: bool = True,
    ) -> Arg:
        """ValueError naming the argument unless it has these facts; returns self."""
        if ndim is not None and self.ndim != ndim:
            raise ValueError(f"{self.name} must be {ndim}-D, got shape {self.shape}")
        if shape is not None and self.shape != tuple(shape):
            raise ValueError(f"{self.name} must have shape {list(shape)}, got {list(self.shape)}")
        if dtypes is not None and self.dtype not in dtypes:
            raise ValueError(f"{self.name} must be one of {list(dtypes)}, got {self.dtype}")
        if contiguous and not self.contiguous():
            raise ValueError(f"{self.name} must be contiguous")
        return self


def same_device(*args: Arg) -> str:
    """The device all ``args`` share (ValueError naming two that differ); they must also
    share one framework: a kernel's tensors come from one allocator."""
    first = args[0]
    for a in args[1:]:
        if a.fw != first.fw:
            raise ValueError(f"{a.name} is a {a.fw} tensor but {first.name} is {first.fw}")
        if a.device != first.device:
            raise ValueError(f"{a.name} is on {a.device} but {first.name} is on {first.device}")
    return first.device
