"""KV-cache sizing the way serving engines do it."""

from __future__ import annotations


def kv_cache_budget(
    total: int, utilization: float, used_after_profile: int, peak_increase: int
) -> int:
    """Bytes left for the KV cache: total x utilization - used after a profile run -
    the framework's peak increase during it. Raises when nothing is left."""
    if not 0 < utilization <= 1:
        raise ValueError(f"utilization must be in (0, 1], got {utilization}")
    for name, v in (
        ("total", total),
        ("used_after_profile", used_after_profile),
        ("peak_increase", peak_increase),
    ):
        if v < 0:
            raise ValueError(f"{name} must be >= 0, got {v}")
    budget = int(total * utilization) - used_after_profile - peak_increase
    if budget <= 0:
        raise ValueError(
            f"no memory left for the KV cache: {total} x {utilization} - {used_after_profile} "
            f"- {peak_increase} = {budget} bytes"
        )
    return budget


def kv_block_bytes(
    num_layers: int, num_kv_heads: int, head_dim: int, block_size: int, dtype_bytes: int
) -> int:
    """Bytes of one paged block: K and V, every layer."""
    return 2 * num_layers * num_kv_heads * head_dim * block_size * dtype_bytes


def num_kv_blocks(budget: int, block_bytes: int) -> int:
    if block_bytes <= 0:
        raise ValueError(f"block_bytes must be > 0, got {block_bytes}")
    return budget // block_bytes
