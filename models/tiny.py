"""A small decoder that exercises the real serving path.

Token + position embeddings (bounds-checked gathers), layers of RMSNorm -> QKV ->
KV written into a paged cache with ``scatter_slots`` at ``slot_mapping`` -> causal
attention over the cache through ``block_tables`` -> output projection -> SwiGLU MLP,
then the LM head on each sequence's last token (``logits_indices``). Random weights
from a seed, identical for every backend.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from graphbatch.executor.backends import Backend
from graphbatch.executor.static_buffers import ModelInputs
from graphbatch.kernels import gather_slots
from graphbatch.kvcache import KVLayout
from graphbatch.scheduler import SchedulerConfig

from .config import check_positive_ints
from .layers import cached_attention, rms_norm


@dataclass(frozen=True)
class TinyConfig:
    vocab_size: int = 4096
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 128
    dtype: str = "float32"
    seed: int = 0
    rms_eps: float = 1e-6

    def __post_init__(self) -> None:
        check_positive_ints(self, (
            "vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
            "intermediate_size",
        ))  # fmt: skip
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} / num_heads {self.num_heads} / "
                f"num_kv_heads {self.num_kv_heads} do not divide"
            )
        hd = self.head_dim
        if hd < 16 or hd & (hd - 1):
            raise ValueError(f"head_dim {hd} must be a power of two >= 16")
        if self.dtype not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"dtype must be float32/float16/bfloat16, got {self.dtype!r}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def kv_layout(self, block_size: int) -> KVLayout:
        """The paged cache's transfer layout (what a decode receiver must match)."""
        itemsize = 4 if self.dtype == "float32" else 2
        row = self.num_kv_heads * self.head_dim * itemsize  # one token's K (or V)
        return KVLayout(2 * self.num_layers, block_size * row)


PRESETS = {
    "tiny": TinyConfig(),  # CPU default: seconds under the Triton interpreter
    "small": TinyConfig(
        hidden_size=512,
        num_layers=4,
        num_heads=8,
        num_kv_heads=4,
        intermediate_size=1408,
        dtype="bfloat16",
    ),
    "large": TinyConfig(
        vocab_size=151552,
        hidden_size=2048,
        num_layers=4,
        num_heads=16,
        num_kv_heads=4,
        intermediate_size=5632,
        dtype="bfloat16",
    ),
}


def preset(name: str, **overrides: Any) -> TinyConfig:
    if name not in PRESETS:
        raise ValueError(f"model preset must be one of {sorted(PRESETS)}, got {name!r}")
    return replace(PRESETS[name], **overrides)


class TinyDecoder:
    def __init__(self, config: TinyConfig) -> None:
        self.config = config
        self.backend: Backend | None = None

    def __repr__(self) -> str:
        c = self.config
        return (
            f"TinyDecoder(random weights, seed {c.seed}, {c.num_layers} layers, hidden "
            f"{c.hidden_size}, vocab {c.vocab_size}, {c.dtype})"
        )

    def bind(self, backend: Backend, sched: SchedulerConfig) -> None:
        """Allocate weights and the paged KV cache on the executor's backend."""
        c = self.config
        if sched.vocab_size != c.vocab_size:
            raise ValueError(f"scheduler vocab_size {sched.vocab_size} != model {c.vocab_size}")
        self.backend = backend
        rng = np.random.default_rng(c.seed)
        H, KV, D, FF = c.hidden_size, c.num_kv_heads * c.head_dim, c.head_dim, c.intermediate_size

        def w(*shape: int, scale: float | None = None) -> Any:
            s = scale if scale is not None else shape[0] ** -0.5
            arr = (rng.standard_normal(shape, dtype=np.float32) * s).astype(np.float32)
            return backend.cast(backend.from_numpy(arr), c.dtype)

        self.embed = w(c.vocab_size, H, scale=1.0)
        # its own stream, drawn row by row: position p's row, and every other weight, are
        # the same whatever max_model_len is (a decode side's cache is longer)
        pos = np.random.default_rng([c.seed, 1]).standard_normal((sched.max_model_len, H))
        self.pos_embed = backend.cast(backend.from_numpy((pos * 0.1).astype(np.float32)), c.dtype)
        self.layers = [
            dict(
                wq=w(H, H),
                wk=w(H, KV),
                wv=w(H, KV),
                wo=w(H, H),
                w1=w(H, FF),
                w3=w(H, FF),
                w2=w(FF, H),
                n1=w(1, H, scale=0.0),
                n2=w(1, H, scale=0.0),
            )
            for _ in range(c.num_layers)
        ]
        for layer in self.layers:  # RMSNorm weights start at one
            backend.fill(layer["n1"], 1.0)
            backend.fill(layer["n2"], 1.0)
        self.norm = w(1, H, scale=0.0)
        backend.fill(self.norm, 1.0)
        self.lm_head = w(H, c.vocab_size)
        cache_shape = (sched.num_slots, c.num_kv_heads, D)
        self.k_cache = [backend.empty(cache_shape, c.dtype) for _ in range(c.num_layers)]
        self.v_cache = [backend.empty(cache_shape, c.dtype) for _ in range(c.num_layers)]
        for cache in self.k_cache + self.v_cache:
            backend.fill(cache, 0.0)

    def kv_caches(self) -> list[Any]:
        """Every layer's paged K and V cache ([num_slots, kv_heads, head_dim] each),
        in the order a KV transfer pairs them with the decode side's: K0, V0, K1, ..."""
        return [t for kv in zip(self.k_cache, self.v_cache, strict=True) for t in kv]

    def _rms(self, x: Any, weight: Any) -> Any:
        return rms_norm(self.backend, x, weight, self.config.rms_eps, self.config.dtype)

    def forward(self, inp: ModelInputs) -> Any:
        """Logits [max_num_seqs, vocab] (float32) for each sequence's last token."""
        b, c, err = self.backend, self.config, inp.errors
        T, D = inp.num_tokens, c.head_dim
        h = gather_slots(self.embed, inp.input_ids, error_counter=err["input_ids"])
        h = h + gather_slots(self.pos_embed, inp.positions, error_counter=err["positions"])
        for i, L in enumerate(self.layers):
            x = self._rms(h, L["n1"])
            q = b.reshape(x @ L["wq"], (T, c.num_heads, D))
            k = b.reshape(x @ L["wk"], (T, c.num_kv_heads, D))
            v = b.reshape(x @ L["wv"], (T, c.num_kv_heads, D))
            a = cached_attention(inp, q, k, v, self.k_cache[i], self.v_cache[i], D**-0.5, layer=i)
            h = h + b.reshape(a, (T, c.hidden_size)) @ L["wo"]
            x = self._rms(h, L["n2"])
            h = h + (b.silu(x @ L["w1"]) * (x @ L["w3"])) @ L["w2"]
        last = gather_slots(
            self._rms(h, self.norm), inp.logits_indices, error_counter=err["logits_indices"]
        )
        return b.cast(last @ self.lm_head, "float32")
