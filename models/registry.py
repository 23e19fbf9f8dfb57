"""Architecture names -> the decoder's switches, and HF ``config.json`` -> ``ModelConfig``.

Adding an architecture that fits the decoder (pre-norm, RoPE, SwiGLU, GQA) is one row
here; anything a checkpoint asks for that the decoder does not do is refused by name.
"""

from __future__ import annotations

from typing import Any

from .config import ModelConfig, RopeScaling

# HF class name -> (architecture, forced switches)
ARCHITECTURES: dict[str, tuple[str, dict[str, Any]]] = {
    "LlamaForCausalLM": ("llama", {}),
    "Qwen2ForCausalLM": ("qwen2", {"attention_bias": True}),
    "Qwen3ForCausalLM": ("qwen3", {"qk_norm": True}),
}
# GGUF general.architecture -> HF class name
GGUF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                      "qwen3": "Qwen3ForCausalLM"}  # fmt: skip


class UnsupportedModel(ValueError):
    """The checkpoint asks for an architecture or feature this decoder does not have."""


def _need(cfg: dict, key: str, source: str) -> Any:
    if key not in cfg:
        raise ValueError(f"{source}: field {key!r} is missing")
    return cfg[key]


def rope_of(cfg: dict, source: str) -> tuple[float, RopeScaling | None]:
    """(rope_theta, scaling) from either ``rope_parameters`` (transformers 5) or
    ``rope_theta`` + ``rope_scaling`` (older checkpoints)."""
    params = cfg.get("rope_parameters") or {}
    theta = params.get("rope_theta", cfg.get("rope_theta", 10000.0))
    scaling = cfg.get("rope_scaling") or params
    kind = scaling.get("rope_type", scaling.get("type", "default")) if scaling else "default"
    if kind in (None, "default"):
        return float(theta), None
    if kind != "llama3":
        raise UnsupportedModel(f"{source}: rope type {kind!r} is not supported (default, llama3)")
    try:
        return float(theta), RopeScaling(
            factor=float(scaling["factor"]),
            low_freq_factor=float(scaling["low_freq_factor"]),
            high_freq_factor=float(scaling["high_freq_factor"]),
            original_max_position_embeddings=int(scaling["original_max_position_embeddings"]),
        )
    except KeyError as e:
        raise ValueError(f"{source}: llama3 rope scaling lacks {e.args[0]!r}") from None


def _refuse_features(cfg: dict, source: str) -> None:
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise UnsupportedModel(f"{source}: hidden_act {act!r} is not supported (silu)")
    if cfg.get("mlp_bias"):
        raise UnsupportedModel(f"{source}: mlp_bias true is not supported")
    if cfg.get("use_sliding_window"):
        raise UnsupportedModel(f"{source}: use_sliding_window true is not supported")
    if cfg.get("quantization_config"):
        raise UnsupportedModel(f"{source}: quantized safetensors are not supported")


def _eos_ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    return tuple(int(v) for v in (value if isinstance(value, list) else [value]))


def config_from_hf(cfg: dict, source: str, dtype: str = "float32") -> ModelConfig:
    """``ModelConfig`` from a parsed HF ``config.json`` (``source`` names the file)."""
    archs = cfg.get("architectures") or []
    known = [a for a in archs if a in ARCHITECTURES]
    if not known:
        raise UnsupportedModel(
            f"{source}: architectures {archs} not supported (one of {sorted(ARCHITECTURES)})"
        )
    arch, forced = ARCHITECTURES[known[0]]
    _refuse_features(cfg, source)
    hidden = int(_need(cfg, "hidden_size", source))
    heads = int(_need(cfg, "num_attention_heads", source))
    theta, scaling = rope_of(cfg, source)
    switches = {
        "attention_bias": bool(cfg.get("attention_bias", False)),
        "qk_norm": False,
        **forced,
    }
    return ModelConfig(
        architecture=arch,
        vocab_size=int(_need(cfg, "vocab_size", source)),
        hidden_size=hidden,
        num_layers=int(_need(cfg, "num_hidden_layers", source)),
        num_heads=heads,
        num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
        head_dim=int(cfg.get("head_dim") or hidden // heads),
        intermediate_size=int(_need(cfg, "intermediate_size", source)),
        rms_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_scaling=scaling,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        max_position_embeddings=int(cfg.get("max_position_embeddings", 4096)),
        dtype=dtype,
        bos_token_id=cfg.get("bos_token_id"),
        eos_token_ids=_eos_ids(cfg.get("eos_token_id")),
        **switches,
    )
