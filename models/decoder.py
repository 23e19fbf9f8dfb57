"""One decoder for Llama, Qwen2 and Qwen3 checkpoints, over the executor's static buffers.

Per layer: RMSNorm -> fused QKV (bias for Qwen2) -> per-head q/k RMSNorm (Qwen3) ->
RoPE at the descriptor's positions -> K/V written into the paged cache at
``slot_mapping`` -> causal paged attention -> o_proj -> RMSNorm -> fused gate/up ->
SwiGLU -> down. The cos/sin tables are static device buffers gathered at ``positions``
(bounds-checked), so a chunk that starts at a prefix-cache hit is rotated right and a
captured graph reads the same addresses every replay. Only each sequence's last token
goes through the final norm and the LM head.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
from graphbatch.executor.backends import Backend
from graphbatch.executor.static_buffers import ModelInputs
from graphbatch.kernels import gather_slots
from graphbatch.scheduler import SchedulerConfig

from .config import ModelConfig
from .layers import cached_attention, rms_norm
from .rope import cos_sin
from .weights import WeightStore

PROGRESS_MIN_LAYERS = 8  # smaller models load too fast to need a progress line


def _progress(name: str, done: int, total: int) -> None:
    quarter = max(1, total // 4)
    if total >= PROGRESS_MIN_LAYERS and (done % quarter == 0 or done == total):
        print(f"graphbatch: loading {name}: layer {done}/{total}", file=sys.stderr)


class Decoder:
    """A checkpoint's weights (host, float32) plus, once bound, its device state.

    ``config`` is the architecture, ``tokenizer`` the checkpoint's own (or None),
    ``name`` what it was loaded from.
    """

    def __init__(
        self,
        config: ModelConfig,
        weights: WeightStore,
        tokenizer: Any = None,
        name: str = "",
        rope_factors: np.ndarray | None = None,
    ) -> None:
        self.config = config
        self.weights = weights
        self.tokenizer = tokenizer
        self.name = name or weights.source
        self.rope_factors = rope_factors
        self.backend: Backend | None = None

    def __repr__(self) -> str:
        c = self.config
        return (
            f"Decoder({self.name!r}, {c.architecture}, {c.num_layers} layers, "
            f"hidden {c.hidden_size}, {c.dtype})"
        )

    # ---- bind: weights and caches on the executor's backend --------------------
    def bind(self, backend: Backend, sched: SchedulerConfig) -> None:
        c = self.config
        if sched.vocab_size != c.vocab_size:
            raise ValueError(f"scheduler vocab_size {sched.vocab_size} != model {c.vocab_size}")
        self.backend = backend
        cos, sin = cos_sin(c, sched.max_model_len, self.rope_factors)
        self.cos = backend.cast(backend.from_numpy(cos), c.dtype)
        self.sin = backend.cast(backend.from_numpy(sin), c.dtype)
        get = self.weights.get
        self.embed = backend.cast(
            backend.from_numpy(get("model.embed_tokens.weight", (c.vocab_size, c.hidden_size))),
            c.dtype,
        )
        self.layers = []
        for i in range(c.num_layers):
            self.layers.append(self._bind_layer(i))
            _progress(self.name, i + 1, c.num_layers)
        self.norm = self._vector(get("model.norm.weight", (c.hidden_size,)))
        head = "model.embed_tokens.weight" if c.tie_word_embeddings else "lm_head.weight"
        self.lm_head = backend.linear_weight(get(head, (c.vocab_size, c.hidden_size)), c.dtype)
        shape = (sched.num_slots, c.num_kv_heads, c.head_dim)
        self.k_cache = [backend.empty(shape, c.dtype) for _ in range(c.num_layers)]
        self.v_cache = [backend.empty(shape, c.dtype) for _ in range(c.num_layers)]
        for cache in self.k_cache + self.v_cache:
            backend.fill(cache, 0.0)

    def _vector(self, arr: np.ndarray) -> Any:
        return self.backend.cast(self.backend.from_numpy(arr), self.config.dtype)

    def _bind_layer(self, i: int) -> dict[str, Any]:
        c, b, get = self.config, self.backend, self.weights.get
        p, H, FF = f"model.layers.{i}.", c.hidden_size, c.intermediate_size
        qd, kd = c.num_heads * c.head_dim, c.num_kv_heads_dim
        qkv = [
            get(p + f"self_attn.{n}_proj.weight", (d, H))
            for n, d in (("q", qd), ("k", kd), ("v", kd))
        ]
        layer = {
            "n1": self._vector(get(p + "input_layernorm.weight", (H,))),
            "n2": self._vector(get(p + "post_attention_layernorm.weight", (H,))),
            # one GEMM for q, k, v and one for gate, up: fewer, larger matmuls
            "wqkv": b.linear_weight(np.concatenate(qkv), c.dtype),
            "bqkv": None,
            "wo": b.linear_weight(get(p + "self_attn.o_proj.weight", (H, qd)), c.dtype),
            "wgu": b.linear_weight(
                np.concatenate(
                    [
                        get(p + "mlp.gate_proj.weight", (FF, H)),
                        get(p + "mlp.up_proj.weight", (FF, H)),
                    ]
                ),
                c.dtype,
            ),
            "wd": b.linear_weight(get(p + "mlp.down_proj.weight", (H, FF)), c.dtype),
        }
        if c.attention_bias:
            bias = [
                get(p + f"self_attn.{n}_proj.bias", (d,))
                for n, d in (("q", qd), ("k", kd), ("v", kd))
            ]
            layer["bqkv"] = self._vector(np.concatenate(bias))
        if c.qk_norm:
            layer["qn"] = self._vector(get(p + "self_attn.q_norm.weight", (c.head_dim,)))
            layer["kn"] = self._vector(get(p + "self_attn.k_norm.weight", (c.head_dim,)))
        return layer

    def kv_caches(self) -> list[Any]:
        """Every layer's paged K and V cache ([num_slots, kv_heads, head_dim] each),
        in the order a KV transfer pairs them with the decode side's: K0, V0, K1, ..."""
        return [t for kv in zip(self.k_cache, self.v_cache, strict=True) for t in kv]

    # ---- forward ----------------------------------------------------------------
    def _rms(self, x: Any, weight: Any) -> Any:
        return rms_norm(self.backend, x, weight, self.config.rms_eps, self.config.dtype)

    def _rope(self, x: Any, cos: Any, sin: Any) -> Any:
        half = self.config.head_dim // 2
        rotated = self.backend.cat([-x[..., half:], x[..., :half]], -1)
        return x * cos + rotated * sin

    def _attention(self, i: int, L: dict, x: Any, inp: ModelInputs, cos: Any, sin: Any) -> Any:
        b, c, T = self.backend, self.config, inp.num_tokens
        qd, kd, D = c.num_heads * c.head_dim, c.num_kv_heads_dim, c.head_dim
        qkv = b.linear(x, L["wqkv"], L["bqkv"])
        q = b.reshape(qkv[:, :qd], (T, c.num_heads, D))
        k = b.reshape(qkv[:, qd : qd + kd], (T, c.num_kv_heads, D))
        v = b.contiguous(b.reshape(qkv[:, qd + kd :], (T, c.num_kv_heads, D)))
        if c.qk_norm:
            q, k = self._rms(q, L["qn"]), self._rms(k, L["kn"])
        q, k = self._rope(q, cos, sin), self._rope(k, cos, sin)
        a = cached_attention(inp, q, k, v, self.k_cache[i], self.v_cache[i], D**-0.5, layer=i)
        return b.linear(b.reshape(a, (T, qd)), L["wo"])

    def _rope_tables(self, inp: ModelInputs) -> tuple[Any, Any]:
        """cos, sin [T, 1, head_dim] at each token's position (checked once, here)."""
        b, T, D = self.backend, inp.num_tokens, self.config.head_dim
        cos = gather_slots(self.cos, inp.positions, error_counter=inp.errors["positions"])
        sin = gather_slots(self.sin, inp.positions)
        return b.reshape(cos, (T, 1, D)), b.reshape(sin, (T, 1, D))

    def forward(self, inp: ModelInputs) -> Any:
        """Logits [max_num_seqs, vocab] (float32) for each sequence's last token."""
        b, c, err = self.backend, self.config, inp.errors
        h = gather_slots(self.embed, inp.input_ids, error_counter=err["input_ids"])
        cos, sin = self._rope_tables(inp)
        FF = c.intermediate_size
        for i, L in enumerate(self.layers):
            h = h + self._attention(i, L, self._rms(h, L["n1"]), inp, cos, sin)
            gu = b.linear(self._rms(h, L["n2"]), L["wgu"])
            h = h + b.linear(b.silu(gu[:, :FF]) * gu[:, FF:], L["wd"])
        # norm is per row: norm the gathered last rows, not all T
        last = gather_slots(h, inp.logits_indices, error_counter=err["logits_indices"])
        return b.cast(b.linear(self._rms(last, self.norm), self.lm_head), "float32")
