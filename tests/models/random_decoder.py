"""Random-weight ``Decoder``s of each architecture, built without transformers (for tests
that need the real decoder's code path, not HF's numbers)."""

from __future__ import annotations

import numpy as np
from graphbatch.models import Decoder, ModelConfig, RopeScaling
from graphbatch.models.weights import WeightStore

ARCHS = {
    "llama3": dict(architecture="llama", rope_scaling=RopeScaling(8.0, 1.0, 4.0, 64)),
    "qwen2": dict(architecture="qwen2", attention_bias=True, tie_word_embeddings=True),
    "qwen3": dict(architecture="qwen3", qk_norm=True, head_dim=32),
}


def hf_shapes(c: ModelConfig) -> dict[str, tuple[int, ...]]:
    H, FF, q, kv = c.hidden_size, c.intermediate_size, c.num_heads * c.head_dim, c.num_kv_heads_dim
    shapes = {"model.embed_tokens.weight": (c.vocab_size, H), "model.norm.weight": (H,)}
    if not c.tie_word_embeddings:
        shapes["lm_head.weight"] = (c.vocab_size, H)
    for i in range(c.num_layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (H,), p + "post_attention_layernorm.weight": (H,),
            p + "self_attn.q_proj.weight": (q, H), p + "self_attn.k_proj.weight": (kv, H),
            p + "self_attn.v_proj.weight": (kv, H), p + "self_attn.o_proj.weight": (H, q),
            p + "mlp.gate_proj.weight": (FF, H), p + "mlp.up_proj.weight": (FF, H),
            p + "mlp.down_proj.weight": (H, FF),
        })  # fmt: skip
        if c.attention_bias:
            for n, d in (("q", q), ("k", kv), ("v", kv)):
                shapes[p + f"self_attn.{n}_proj.bias"] = (d,)
        if c.qk_norm:
            shapes[p + "self_attn.q_norm.weight"] = (c.head_dim,)
            shapes[p + "self_attn.k_norm.weight"] = (c.head_dim,)
    return shapes


def random_decoder(arch: str, vocab_size: int, seed: int = 0, **overrides) -> Decoder:
    kw = dict(vocab_size=vocab_size, hidden_size=64, num_layers=2, num_heads=4,
              num_kv_heads=2, head_dim=16, intermediate_size=128)  # fmt: skip
    cfg = ModelConfig(**{**kw, **ARCHS[arch], **overrides})
    rng = np.random.default_rng(seed)
    arrays = {
        n: (rng.standard_normal(s) * 0.25).astype(np.float32) for n, s in hf_shapes(cfg).items()
    }
    return Decoder(cfg, WeightStore(arch, {n: (lambda a=a: a) for n, a in arrays.items()}))
