"""Checkpoint tensors as float32 NumPy arrays in HF names and layouts.

``WeightStore`` is what the decoder reads at ``bind``: a name -> array mapping that
names the checkpoint and the tensor when one is missing or has the wrong shape.
safetensors files are parsed directly (header + memory map: bf16 needs no framework).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable

import numpy as np

_ST_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64}
MAX_HEADER = 100 << 20  # a safetensors header past 100 MiB is not a checkpoint


class WeightStore:
    """Lazily loaded float32 tensors; ``source`` names the checkpoint in errors."""

    def __init__(self, source: str, loaders: dict[str, Callable[[], np.ndarray]]) -> None:
        self.source = source
        self._loaders = loaders

    def __contains__(self, name: str) -> bool:
        return name in self._loaders

    def names(self) -> list[str]:
        return sorted(self._loaders)

    def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in self._loaders:
            raise ValueError(f"{self.source}: tensor {name!r} is missing")
        arr = self._loaders[name]()
        if tuple(arr.shape) != tuple(shape):
            raise ValueError(
                f"{self.source}: tensor {name!r} has shape {tuple(arr.shape)}, "
                f"the config implies {tuple(shape)}"
            )
        return arr


def _to_f32(raw: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":  # bf16 is the top half of a float32
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(np.float32, copy=False)


def _read_header(path: str) -> tuple[dict, int]:
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER:
            raise ValueError(f"{path}: header length {n} is not plausible")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: unreadable safetensors header ({e})") from None
    return header, 8 + n


def safetensors_loaders(path: str) -> dict[str, Callable[[], np.ndarray]]:
    """name -> loader of one safetensors file (memory-mapped, read on demand)."""
    header, base = _read_header(path)
    size = os.path.getsize(path)
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    out: dict[str, Callable[[], np.ndarray]] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt = info.get("dtype")
        if dt not in _ST_DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has dtype {dt!r} (F32/F16/BF16 only)")
        begin, end = (base + int(o) for o in info["data_offsets"])
        shape = tuple(int(s) for s in info["shape"])
        want = int(np.prod(shape)) * np.dtype(_ST_DTYPES[dt]).itemsize
        if end - begin != want or end > size:
            raise ValueError(f"{path}: tensor {name!r} byte range does not match its shape")

        def load(b=begin, e=end, dt=dt, shape=shape) -> np.ndarray:
            return _to_f32(mm[b:e].view(_ST_DTYPES[dt]).reshape(shape), dt)

        out[name] = load
    return out


def hf_weights(folder: str) -> WeightStore:
    """Every tensor of an HF folder: ``model.safetensors`` or the sharded index."""
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f).get("weight_map", {}).values()))
        if not files:
            raise ValueError(f"{index}: weight_map is empty")
    else:
        files = sorted(n for n in os.listdir(folder) if n.endswith(".safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder}: no *.safetensors file (and no index)")
    loaders: dict[str, Callable[[], np.ndarray]] = {}
    for name in files:
        path = os.path.join(folder, name)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: named by the index but missing")
        loaders.update(safetensors_loaders(path))
    return WeightStore(folder, loaders)
