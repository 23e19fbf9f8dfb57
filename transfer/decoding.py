"""The decode instance's decoder: the receiver's KV cache *is* a model's paged cache, so
each received request continues from its KV and first token (``DecodeBatch``: the same
model code and executor as the prefill side) and the tokens go back to its sender.

The model's cache has one block more than the receiver lends: its block 0 is the
executor's reserved padding block, and receiver block ``b`` is the model's ``b + 1``.
A request decodes in the blocks it arrived in plus the ones its continuation needs,
taken from the receiver's free list when it is received and given back when it ends.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from graphbatch.kvcache import KVMemory
from graphbatch.scheduler import SamplingParams

from . import wire

log = logging.getLogger("graphbatch.transfer")

MAX_DECODE_TOKENS = 1 << 16


@dataclass(frozen=True)
class DecodeInfo:
    """What a request's write notification tells the decode side (``dec``): its prompt
    length (the KV holds the prompt) and its sampling, seed resolved."""

    prompt_len: int
    sampling: SamplingParams  # its seed is the one the prefill side drew with

    def to_json(self) -> dict[str, Any]:
        return {"n": self.prompt_len, "sp": dataclasses.asdict(self.sampling)}

    @classmethod
    def from_json(cls, obj: Any) -> DecodeInfo:
        """ProtocolError naming the field for anything a request could not carry."""
        if not isinstance(obj, dict):
            raise wire.ProtocolError(f"decode info is not an object: {str(obj)[:80]!r}")
        n = wire.int_field({"type": "dec", **obj}, "n", 1, 1 << 40)
        sp = obj.get("sp")
        if not isinstance(sp, dict) or set(sp) - _SAMPLING_FIELDS:
            raise wire.ProtocolError(f"decode info: sampling {str(sp)[:80]!r} is invalid")
        try:  # SamplingParams checks every value (the descriptor's rules)
            sampling = SamplingParams(**sp)
        except (TypeError, ValueError) as e:
            raise wire.ProtocolError(f"decode info: {e}") from None
        if sampling.seed is None:
            raise wire.ProtocolError("decode info: no seed")
        return cls(n, sampling)


_SAMPLING_FIELDS = {f.name for f in dataclasses.fields(SamplingParams)}


def load_decoder(config) -> tuple[Any, KVMemory]:
    """(executor, the receiver's KVMemory inside its cache) for ``config`` (a
    ReceiverConfig with ``decode_tokens``). ValueError when the model's KV layout is not
    the one the receiver serves."""
    from graphbatch.executor import GraphExecutor
    from graphbatch.models import load_model
    from graphbatch.scheduler import SchedulerConfig

    model = load_model(config.model, dtype=config.dtype, seed=config.model_seed)
    rows = config.decode_max_num_seqs
    sched = SchedulerConfig(
        max_num_seqs=rows,
        max_num_batched_tokens=rows,  # decode steps: one token per request
        block_size=config.block_size,
        num_kv_blocks=config.num_blocks + 1,  # + the executor's reserved block 0
        max_model_len=config.num_blocks * config.block_size,
        vocab_size=model.config.vocab_size,
        enable_prefix_caching=False,
    )
    ex = GraphExecutor(model, sched, backend=config.backend)
    ex.capture()
    mem = ex.kv_memory()
    if mem.layout != config.layout:
        raise ValueError(
            f"model {config.model!r} at block size {config.block_size} has KV layout "
            f"{mem.layout}, the receiver serves {config.layout}"
        )
    bb = mem.layout.block_bytes
    shifted = tuple(b + bb for b in mem.bases)  # receiver block b = the model's b + 1
    return ex, KVMemory(mem.layout, shifted, config.num_blocks, mem.mem_type, mem.device_id)


@dataclass(eq=False)
class _Job:
    peer: Any
    rid: str
    blocks: list[int]  # receiver block ids, the received ones first


class Decoder:
    """Continues received requests ``decode_tokens`` tokens each, batched; ``take`` and
    ``give`` move receiver blocks between the free list and a decoding request;
    ``reply(peer, kind, **fields)`` answers its sender."""

    def __init__(self, config, executor, take, give, reply) -> None:
        from graphbatch.executor.continuation import DecodeBatch

        self.n, self.bs = config.decode_tokens, config.block_size
        self.take, self.give, self.reply = take, give, reply
        tok = getattr(executor.model, "tokenizer", None)
        eos = tok.eos_token_id if tok is not None else None
        self.batch = DecodeBatch(
            executor, (), eos_token_id=eos, on_release=self._released, margins=config.decode_margins
        )
        self.jobs: dict[str, _Job] = {}  # keyed like the batch: sender agent + request id
        self.decoded = self.failed = 0

    @property
    def busy(self) -> bool:
        return bool(self.jobs)

    def start(self, peer, rid: str, blocks: list[int], first_token: int, dec: Any) -> None:
        """A request was acked: decode it (or tell its sender why not)."""
        try:
            info = DecodeInfo.from_json(dec)
        except wire.ProtocolError as e:
            self._fail(peer, rid, blocks, f"bad decode info: {e}")
            return
        need = math.ceil((info.prompt_len + self.n) / self.bs) - len(blocks)
        more = self.take(need) if need > 0 else []
        if more is None:
            self._fail(peer, rid, blocks, f"no {need} free blocks to decode {self.n} tokens into")
            return
        key = f"{peer.agent}\x00{rid}"
        job = _Job(peer, rid, [*blocks, *more])
        tokens = np.zeros(info.prompt_len + 1, dtype=np.int64)  # the KV holds the prompt
        tokens[-1] = first_token
        try:
            self.batch.add(
                key, tokens, info.prompt_len, [b + 1 for b in job.blocks], info.sampling,
                info.sampling.seed, max_new_tokens=self.n,
            )  # fmt: skip
        except ValueError as e:
            self._fail(peer, rid, job.blocks, str(e))
            return
        self.jobs[key] = job

    def step(self) -> None:
        for c in self.batch.step():
            job = self.jobs.pop(c.request_id)
            self.decoded += 1
            self.reply(
                job.peer, wire.DECODED, rid=job.rid, tokens=list(c.token_ids),
                logprobs=list(c.logprobs), margins=list(c.margins), decode_s=c.decode_s,
            )  # fmt: skip

    def _released(self, key: str, model_blocks: list[int]) -> None:
        self.give([b - 1 for b in model_blocks])

    def _fail(self, peer, rid: str, blocks: list[int], reason: str) -> None:
        self.failed += 1
        log.warning("cannot decode %r: %s", rid, reason)
        self.give(blocks)
        self.reply(peer, wire.DECODE_FAILED, rid=rid, reason=reason)
