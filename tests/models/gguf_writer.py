"""HF checkpoints -> GGUF files as llama.cpp's ``convert_hf_to_gguf.py`` writes them, for
the loader tests. Written from llama.cpp's conventions, not from ``models/gguf_io.py``."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader, GGUFValueType, GGUFWriter
from gguf.quants import dequantize, quant_shape_to_byte_shape, quantize

_LAYER = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_GLOBAL = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}


def gguf_name(hf: str) -> str:
    stem, kind = hf.rsplit(".", 1)
    if stem in _GLOBAL:
        return f"{_GLOBAL[stem]}.{kind}"
    _model, _layers, i, part = stem.split(".", 3)
    return f"blk.{i}.{_LAYER[part]}.{kind}"


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's ``LlamaModel.permute``: each head's rotary halves interleaved."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def mixed_types(gguf: str, w: np.ndarray) -> Q:
    """Vectors F32, embeddings and LM head F16, the block matrices Q8_0."""
    if w.ndim == 1:
        return Q.F32
    return Q.F16 if gguf.startswith(("token_embd", "output")) else Q.Q8_0


def tokenizer_fields(path: str) -> list[tuple]:
    """(key, value, type, element type) of every ``tokenizer.*`` field of a GGUF file."""
    out = []
    for key, f in GGUFReader(path).fields.items():
        if key.startswith("tokenizer."):
            sub = f.types[-1] if f.types[0] == GGUFValueType.ARRAY else None
            out.append((key, f.contents(), f.types[0], sub))
    return out


def hf_meta(arch: str, c) -> dict[str, int | float]:
    """llama.cpp's hyperparameter keys for a transformers config."""
    rope = getattr(c, "rope_parameters", None) or {}
    meta = {
        "block_count": c.num_hidden_layers,
        "context_length": c.max_position_embeddings,
        "embedding_length": c.hidden_size,
        "feed_forward_length": c.intermediate_size,
        "attention.head_count": c.num_attention_heads,
        "attention.head_count_kv": c.num_key_value_heads,
        "rope.freq_base": float(rope.get("rope_theta", getattr(c, "rope_theta", 10000.0))),
        "attention.layer_norm_rms_epsilon": float(c.rms_norm_eps),
    }
    if arch == "llama":  # llama.cpp's LlamaModel writes it; others leave it to the vocab
        meta["vocab_size"] = c.vocab_size
    if arch == "qwen3":
        meta["attention.key_length"] = meta["attention.value_length"] = c.head_dim
    return {f"{arch}.{k}": v for k, v in meta.items()}


def llama3_rope_freqs(c) -> np.ndarray:
    """The ``rope_freqs`` tensor llama.cpp writes for ``rope_type: llama3``."""
    s, dim = c.rope_parameters, c.head_dim
    freqs = 1.0 / (s["rope_theta"] ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    low, high = s["low_freq_factor"], s["high_freq_factor"]
    old = s["original_max_position_embeddings"]
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(s["factor"])
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / s["factor"] + smooth))
    return np.array(out, dtype=np.float32)


def write_gguf(
    path: str,
    arch: str,
    meta: dict,
    state: dict[str, np.ndarray],
    *,
    heads: int = 0,
    kv_heads: int = 0,
    tokenizer: list[tuple] = (),
    types: Callable[[str, np.ndarray], Q] = mixed_types,
    extra: dict[str, np.ndarray] | None = None,
) -> tuple[dict[str, np.ndarray], set[str]]:
    """Write ``state`` (HF names, float32) to ``path``; llama Q/K rows are permuted with
    ``heads``/``kv_heads`` (0: not permuted). Returns HF name -> the float32 values the
    file holds, in HF layout (what a correct reader must give back), and the tensor types
    written."""
    w = GGUFWriter(path, arch)
    for key, value in meta.items():
        if isinstance(value, str):
            w.add_string(key, value)
        elif isinstance(value, float):
            w.add_float32(key, value)
        else:
            w.add_uint32(key, value)
    for key, value, vtype, sub in tokenizer:
        w.add_key_value(key, value, vtype, sub_type=sub)
    back, kinds = {}, set()
    for hf, arr in state.items():
        name = gguf_name(hf)
        kind = types(name, arr)
        kinds.add(kind.name)
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        n = heads if ".attn_q." in name else kv_heads if ".attn_k." in name else 0
        stored = permute(arr, n) if n else arr
        if kind == Q.F32:
            w.add_tensor(name, stored)
        elif kind == Q.F16:
            w.add_tensor(name, stored.astype(np.float16))
        elif kind == Q.Q8_0:
            w.add_tensor(name, quantize(stored, kind), raw_dtype=kind)
        else:  # a type no reader here dequantizes: zero bytes of the right size
            raw = np.zeros(quant_shape_to_byte_shape(stored.shape, kind), dtype=np.uint8)
            w.add_tensor(name, raw, raw_dtype=kind)
            continue
        back[hf] = (
            arr if kind == Q.F32 else dequantize(quantize(arr, kind), kind).astype(np.float32)
        )
    for name, arr in (extra or {}).items():
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return back, kinds


GGUF_ARCH = {"llama": "llama", "llama3": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}


def to_gguf(path, key: str, hf, tok=(), permute: bool = True):
    """Write transformers model ``hf`` (``key`` in ``GGUF_ARCH``) as llama.cpp does, with
    mixed tensor types; returns what ``write_gguf`` returns."""
    arch, c = GGUF_ARCH[key], hf.config
    state = {k: v.detach().float().numpy() for k, v in hf.state_dict().items()}
    if c.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    llama3 = (c.rope_parameters or {}).get("rope_type") == "llama3"
    extra = {"rope_freqs.weight": llama3_rope_freqs(c)} if llama3 else None
    n = arch == "llama" and permute
    heads, kv_heads = (c.num_attention_heads, c.num_key_value_heads) if n else (0, 0)
    return write_gguf(str(path), arch, hf_meta(arch, c), state, tokenizer=tok, extra=extra,
                      heads=heads, kv_heads=kv_heads)  # fmt: skip


def holding(hf, weights: dict[str, np.ndarray]):
    """A copy of transformers model ``hf`` holding ``weights`` (every parameter)."""
    import copy

    import torch

    ref = copy.deepcopy(hf)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            p.copy_(torch.from_numpy(weights[name]))
    return ref
