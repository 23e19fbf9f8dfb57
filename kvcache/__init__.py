"""The paged KV cache's memory layout, shared by the executor (which exports its cache)
and the transfer (which moves blocks of it); numpy only, below both."""

from .layout import MEM_TYPES, BlockReader, KVLayout, KVMemory, check_blocks, host_view

__all__ = ["MEM_TYPES", "BlockReader", "KVLayout", "KVMemory", "check_blocks", "host_view"]
