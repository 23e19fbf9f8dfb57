"""GGUF checkpoints (llama, qwen2, qwen3): config from the metadata, tensors
dequantized to float32 under HF names, Q/K rows of llama models un-permuted."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import ModelConfig
from .registry import GGUF_ARCHITECTURES, UnsupportedModel
from .weights import WeightStore

# GGUF tensor types gguf.quants dequantizes for us (F32/F16/BF16 are plain)
QUANT_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q6_K", "Q5_0", "Q5_1",
               "Q5_K", "Q3_K", "Q2_K")  # fmt: skip
_LAYER = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL = {"token_embd": "model.embed_tokens", "output_norm": "model.norm",
           "output": "lm_head", "rope_freqs": "rope_freqs"}  # fmt: skip


@dataclass(frozen=True)
class GGUFFile:
    """A parsed GGUF file and its path (errors name it)."""

    path: str
    reader: Any  # gguf.GGUFReader

    @property
    def tensors(self) -> list[Any]:
        return self.reader.tensors

    @property
    def fields(self) -> dict[str, Any]:
        return self.reader.fields


def field(reader: GGUFFile, key: str, default: Any = ...) -> Any:
    """One metadata value (``default`` when absent; absent and no default: error)."""
    f = reader.fields.get(key)
    if f is None:
        if default is ...:
            raise ValueError(f"{reader.path}: GGUF field {key!r} is missing")
        return default
    return f.contents()


def hf_name(gguf_name: str) -> str | None:
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", gguf_name)
    if m:
        part = _LAYER.get(m.group(2))
        return None if part is None else f"model.layers.{m.group(1)}.{part}.{m.group(3)}"
    m = re.fullmatch(r"(\w+)\.(weight|bias)", gguf_name)
    if m and m.group(1) in _GLOBAL:
        return f"{_GLOBAL[m.group(1)]}.{m.group(2)}"
    return None


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    # llama.cpp interleaves each head's two rotary halves; HF keeps them split
    rows = w.shape[0]
    return w.reshape(heads, rows // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def config_from_gguf(reader: GGUFFile, dtype: str = "float32") -> ModelConfig:
    arch = field(reader, "general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise UnsupportedModel(
            f"{reader.path}: general.architecture {arch!r} not supported "
            f"(one of {sorted(GGUF_ARCHITECTURES)})"
        )
    kind = field(reader, f"{arch}.rope.scaling.type", "none")
    if kind not in ("none", "llama3"):  # llama3 ships as the rope_freqs tensor
        raise UnsupportedModel(f"{reader.path}: {arch}.rope.scaling.type {kind!r}")
    heads = int(field(reader, f"{arch}.attention.head_count"))
    hidden = int(field(reader, f"{arch}.embedding_length"))
    names = {t.name for t in reader.tensors}
    eos = field(reader, "tokenizer.ggml.eos_token_id", None)
    vocab = field(reader, f"{arch}.vocab_size", None)
    if vocab is None:  # older files: the vocabulary's length
        if "tokenizer.ggml.tokens" not in reader.fields:
            raise ValueError(
                f"{reader.path}: GGUF fields {arch}.vocab_size and tokenizer.ggml.tokens "
                "are both missing: no vocabulary size"
            )
        vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    return ModelConfig(
        architecture=arch,
        vocab_size=int(vocab),
        hidden_size=hidden,
        num_layers=int(field(reader, f"{arch}.block_count")),
        num_heads=heads,
        num_kv_heads=int(field(reader, f"{arch}.attention.head_count_kv", heads)),
        head_dim=int(field(reader, f"{arch}.attention.key_length", hidden // heads)),
        intermediate_size=int(field(reader, f"{arch}.feed_forward_length")),
        rms_eps=float(field(reader, f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)),
        rope_theta=float(field(reader, f"{arch}.rope.freq_base", 10000.0)),
        attention_bias="blk.0.attn_q.bias" in names,
        qk_norm=arch == "qwen3",
        tie_word_embeddings="output.weight" not in names,
        max_position_embeddings=int(field(reader, f"{arch}.context_length", 4096)),
        dtype=dtype,
        bos_token_id=field(reader, "tokenizer.ggml.bos_token_id", None),
        eos_token_ids=() if eos is None else (int(eos),),
    )


def gguf_weights(reader: GGUFFile, config: ModelConfig) -> WeightStore:
    """Dequantized tensors under HF names (llama Q/K un-permuted), loaded on demand."""
    from gguf.quants import dequantize

    loaders = {}
    for t in reader.tensors:
        name = hf_name(t.name)
        if name is None:
            continue
        if t.tensor_type.name not in QUANT_TYPES:
            raise UnsupportedModel(
                f"{reader.path}: tensor {t.name} has type {t.tensor_type.name} "
                f"(supported: {', '.join(QUANT_TYPES)})"
            )
        heads = None
        if config.architecture == "llama" and t.name.endswith(("attn_q.weight", "attn_q.bias")):
            heads = config.num_heads
        elif config.architecture == "llama" and t.name.endswith(("attn_k.weight", "attn_k.bias")):
            heads = config.num_kv_heads

        def load(t=t, heads=heads) -> np.ndarray:
            w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
            return _unpermute(w, heads) if heads else w

        loaders[name] = load
    return WeightStore(str(reader.path), loaders)


def open_gguf(path: str) -> GGUFFile:
    from gguf import GGUFReader

    print(f"graphbatch: reading {path} ...", file=sys.stderr, flush=True)
    try:
        return GGUFFile(path, GGUFReader(path))
    except (ValueError, OSError) as e:
        raise ValueError(f"{path}: not a readable GGUF file ({e})") from None
