"""RoPE frequency tables (plain and llama3-scaled), computed once on the host.

The tables are ``[max_model_len, head_dim]`` cos/sin with the half-split layout HF's
``rotate_half`` uses; the model gathers rows at the descriptor's positions, so a chunk
that starts at a prefix-cache hit or mid-prompt gets its true positions.
"""

from __future__ import annotations

import math

import numpy as np

from .config import ModelConfig, RopeScaling


def _llama3(inv_freq: np.ndarray, s: RopeScaling) -> np.ndarray:
    # long wavelengths are slowed by `factor`, short ones kept, the band between blended
    low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
    high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / s.factor, inv_freq)
    smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor
    )
    blended = (1 - smooth) * scaled / s.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(medium, blended, scaled).astype(np.float32)


def inv_freq(config: ModelConfig, freq_factors: np.ndarray | None = None) -> np.ndarray:
    """Per-pair inverse frequencies [head_dim / 2], float32 like the reference.

    ``freq_factors`` (GGUF ``rope_freqs``) divide the frequencies, as llama.cpp does.
    """
    d = config.head_dim
    exps = np.arange(0, d, 2, dtype=np.int64).astype(np.float32) / np.float32(d)
    inv = (1.0 / (np.float32(config.rope_theta) ** exps)).astype(np.float32)
    if config.rope_scaling is not None:
        inv = _llama3(inv, config.rope_scaling)
    if freq_factors is not None:
        if freq_factors.shape != inv.shape:
            raise ValueError(f"rope_freqs has shape {freq_factors.shape}, expected {inv.shape}")
        inv = (inv / freq_factors.astype(np.float32)).astype(np.float32)
    return inv


def cos_sin(
    config: ModelConfig, max_len: int, freq_factors: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin tables [max_len, head_dim] (float32): angle pos * inv_freq, halves
    repeated so ``x * cos + rotate_half(x) * sin`` rotates each (i, i + d/2) pair."""
    freqs = np.outer(np.arange(max_len, dtype=np.float32), inv_freq(config, freq_factors))
    emb = np.concatenate([freqs, freqs], axis=1).astype(np.float32)
    return np.cos(emb), np.sin(emb)
