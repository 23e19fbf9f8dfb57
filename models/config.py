"""One config for every supported decoder architecture (Llama, Qwen2, Qwen3).

The architectures differ by switches, not by code: QKV bias (Qwen2), per-head q/k
RMSNorm with a ``head_dim`` that need not be hidden / heads (Qwen3), llama3 RoPE
frequency scaling (Llama 3.x), tied embeddings (SmolLM2, small Qwens).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from graphbatch.kvcache import KVLayout

DTYPES = ("float32", "float16", "bfloat16")
ARCHITECTURES = ("llama", "qwen2", "qwen3")


def check_positive_ints(config: object, names: tuple[str, ...]) -> None:
    """ValueError naming the first field of ``config`` that is not an int > 0."""
    for name in names:
        v = getattr(config, name)
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{type(config).__name__}.{name} must be an int > 0, got {v!r}")


@dataclass(frozen=True)
class RopeScaling:
    """llama3-style frequency scaling (``rope_type: llama3``)."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int

    def __post_init__(self) -> None:
        for name in ("factor", "low_freq_factor", "high_freq_factor"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"rope scaling {name} must be a number > 0, got {v!r}")
        if self.high_freq_factor <= self.low_freq_factor:
            raise ValueError(
                f"rope scaling high_freq_factor {self.high_freq_factor} must exceed "
                f"low_freq_factor {self.low_freq_factor}"
            )
        o = self.original_max_position_embeddings
        if isinstance(o, bool) or not isinstance(o, int) or o <= 0:
            raise ValueError(
                f"rope scaling original_max_position_embeddings must be > 0, got {o!r}"
            )


@dataclass(frozen=True)
class ModelConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    attention_bias: bool = False
    qk_norm: bool = False
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 4096
    dtype: str = "float32"
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}"
            )
        check_positive_ints(self, (
            "vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
            "intermediate_size", "max_position_embeddings",
        ))  # fmt: skip
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}"
            )
        hd = self.head_dim
        if hd < 16 or hd & (hd - 1):
            raise ValueError(f"head_dim {hd} must be a power of two >= 16 (paged attention)")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if not self.rms_eps > 0 or not self.rope_theta > 0:
            raise ValueError(
                f"rms_eps ({self.rms_eps}) and rope_theta ({self.rope_theta}) must be > 0"
            )

    @property
    def num_kv_heads_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    def kv_layout(self, block_size: int) -> KVLayout:
        """The paged cache's transfer layout (what a decode receiver must match)."""
        itemsize = 4 if self.dtype == "float32" else 2
        return KVLayout(2 * self.num_layers, block_size * self.num_kv_heads_dim * itemsize)
