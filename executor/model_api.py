"""What the executor needs of a model: the contract, as a ``typing.Protocol``."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from graphbatch.scheduler import SchedulerConfig

from .backends import Backend
from .static_buffers import ModelInputs


@runtime_checkable
class ExecutorModel(Protocol):
    """A model ``GraphExecutor`` runs.

    ``bind`` allocates weights and the paged KV cache on the executor's backend, once.
    ``forward`` reads only the static buffers in ``inputs`` (so a captured graph replays
    it) and returns float32 logits ``[max_num_seqs, vocab_size]`` of each sequence's
    last token; it must not synchronise with the host.
    """

    def bind(self, backend: Backend, scheduler_config: SchedulerConfig) -> None: ...

    def forward(self, inputs: ModelInputs) -> Any: ...


@runtime_checkable
class KVCacheModel(Protocol):
    """A model whose paged KV cache a transfer can send: ``kv_caches()`` returns every
    layer's K and V tensors ``[num_slots, ...]``, ordered K0, V0, K1, V1, ..."""

    def kv_caches(self) -> list[Any]: ...


def check_model(model: Any) -> None:
    """TypeError naming what ``model`` lacks of ``ExecutorModel``."""
    missing = [m for m in ("bind", "forward") if not callable(getattr(model, m, None))]
    if missing:
        raise TypeError(
            f"{type(model).__name__} is not an executor model: it lacks {', '.join(missing)} "
            "(see graphbatch.executor.ExecutorModel)"
        )
