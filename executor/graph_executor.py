"""GraphExecutor: descriptors in, first tokens out, one CUDA graph per token bucket."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
from graphbatch.kernels import gather_slots, layer_signal, scatter_slots, top_p_sample
from graphbatch.kernels._runtime import capturing
from graphbatch.profiling import MemoryTracker, nvtx_range
from graphbatch.scheduler import BatchDescriptor, DescriptorError, SchedulerConfig

from .backends import Backend, Graph, get_backend
from .diagnose import bounds_problems, nonfinite_rows
from .errors import BoundsError
from .layer_flags import LayerFlags
from .model_api import KVCacheModel, check_model
from .static_buffers import StaticBuffers
from .step import StepOutput

log = logging.getLogger("graphbatch.executor")
WARMUP_RUNS = 2


class GraphExecutor:
    """Runs ``model`` over batch descriptors, replaying captured graphs when it can.

    ``model`` is an ``ExecutorModel``: ``bind(backend, scheduler_config)`` allocates its
    weights and KV cache, ``forward(inputs) -> logits [S, V]`` reads only the static
    buffers (``graphbatch.models.load_model`` gives one).
    """

    def __init__(
        self,
        model: Any,
        scheduler_config: SchedulerConfig,
        backend: str | Backend = "paddle",
        device: str | None = None,
        use_cuda_graph: bool = True,
        memory_tracker: MemoryTracker | None = None,
    ) -> None:
        if not isinstance(scheduler_config, SchedulerConfig):
            raise TypeError(
                f"scheduler_config must be a SchedulerConfig, got {type(scheduler_config).__name__}"
            )
        self.config = scheduler_config
        self.tracker = memory_tracker
        self.backend = get_backend(backend, device) if isinstance(backend, str) else backend
        check_model(model)
        self.model = model
        model.bind(self.backend, scheduler_config)
        self.buffers = StaticBuffers(self.backend, scheduler_config)
        S, V = scheduler_config.max_num_seqs, scheduler_config.vocab_size
        self.tokens = self.backend.empty((S,), "int64")  # sampler output, static
        self.logprobs = self.backend.empty((S,), "float32")  # sampled tokens' logprobs
        # one logits buffer for every bucket: the sampler and diagnosis read it
        self.logits = self.backend.empty((S, V), "float32")
        self.use_cuda_graph = use_cuda_graph and self.backend.is_cuda
        if use_cuda_graph and not self.backend.is_cuda:
            log.info("CUDA graphs need a GPU: %s runs eager", self.backend.device)
        self.graphs: dict[int, Graph] = {}
        self.graph_memory: dict[int, int] = {}  # bucket -> bytes its capture took
        self.skipped_buckets: list[int] = []
        self._pool = None
        self.replays: Counter[int] = Counter()
        self.eager_runs: Counter[int] = Counter()
        self.layer_flags: LayerFlags | None = None  # enable_layer_flags()
        self.on_layer: Callable[[int], None] | None = None
        self._copies = self._copy_targets()

    # ---- what a KV transfer needs ----------------------------------------------
    def kv_memory(self):
        """The model's paged KV cache (``model.kv_caches()``) as ``KVMemory`` for a
        ``graphbatch.transfer.KVSender``."""
        from .kv_export import kv_memory

        if not isinstance(self.model, KVCacheModel):
            raise TypeError(f"{type(self.model).__name__} has no kv_caches(): nothing to send")
        return kv_memory(self.model.kv_caches(), self.config)

    def step_event(self):
        """Recorded after the last executed step: ``query()`` true once its KV writes are
        complete (None on CPU: they are)."""
        return self.backend.record_event()

    # ---- one step, the code every path shares --------------------------------
    def enable_layer_flags(self) -> LayerFlags:
        """Have the model flag each layer's KV as written (``LayerFlags``), for a
        layer-wise KV sender; call it before ``capture()`` (the flag launches are part of
        the captured step). ``on_layer(i)``, if set, is also called on the host after
        layer i of an eager step (the CPU path: the sender posts the layer right then)."""
        if self.graphs:
            raise RuntimeError("enable_layer_flags() must come before capture()")
        if self.layer_flags is None:
            if not isinstance(self.model, KVCacheModel):
                raise TypeError(f"{type(self.model).__name__} has no kv_caches()")
            caches = len(self.model.kv_caches())
            self.layer_flags = LayerFlags(caches // 2, self.backend)
        return self.layer_flags

    def _layer_done(self, layer: int) -> None:
        layer_signal(self.buffers.step, self.layer_flags.tensor, layer)
        if self.on_layer is not None and not capturing(self.buffers.step):
            self.on_layer(layer)

    def _copy_targets(self) -> list[tuple[Any, Any]]:
        """(KV cache tensor, staging rows) for the sub-block copy: every tensor of
        ``model.kv_caches()``, one [max_copy_slots, ...] staging buffer per row shape and
        dtype, allocated once (captured graphs keep its address). Empty without a prefix
        cache, or for a model without ``kv_caches()`` (``check`` then refuses a step
        that copies)."""
        cfg = self.config
        if not (cfg.enable_prefix_caching and cfg.max_copy_slots) or not isinstance(
            self.model, KVCacheModel
        ):
            return []
        from graphbatch.kernels._tensor import Arg

        staging: dict[tuple, Any] = {}
        out = []
        for cache in self.model.kv_caches():
            t = Arg(cache, "kv cache")
            key = (t.shape[1:], t.dtype)
            if key not in staging:
                staging[key] = self.backend.empty((cfg.max_copy_slots, *key[0]), key[1])
            out.append((cache, staging[key]))
        return out

    def _copy_slots(self) -> None:
        """Sub-block reuse, before the forward: the KV of slot ``copy_src_slots[i]`` goes
        to slot ``copy_dst_slots[i]`` in every KV cache tensor (bounds-checked gather into
        a staging buffer, then scatter; padding entries copy the dummy block onto itself).
        Fixed shapes, no host sync: part of every captured step."""
        b = self.buffers
        src, dst = b.copy_src_slots, b.copy_dst_slots
        err_src, err_dst = b.errors["copy_src_slots"], b.errors["copy_dst_slots"]
        for cache, rows in self._copies:
            gather_slots(cache, src, out=rows, error_counter=err_src)
            scatter_slots(cache, dst, rows, error_counter=err_dst)

    def _forward_and_sample(self, bucket: int) -> None:
        b = self.buffers
        self._copy_slots()
        inputs = b.view(bucket)
        if self.layer_flags is not None:
            inputs.layer_done = self._layer_done
        self.backend.copy(self.logits, self.model.forward(inputs))
        top_p_sample(
            self.logits,
            b.temperature,
            b.top_p,
            b.top_k,
            b.seeds,
            b.offsets,
            b.num_valid,
            out=self.tokens,
            error_counter=b.errors["sampler"],
            min_p=b.min_p,
            logprobs=self.logprobs,
            check_values=False,  # the descriptor was validated on the host
        )

    # ---- capture --------------------------------------------------------------
    def capture(
        self,
        buckets: list[int] | None = None,
        memory_budget: int | None = None,
        memory_fraction: float | None = None,
    ) -> None:
        """Warm up and capture graphs, largest bucket first, into one pool.

        Capture stops once the graphs took ``memory_budget`` bytes, or
        ``memory_fraction`` of the free GPU memory at the start (needs the memory
        tracker); the remaining buckets run eager (logged).
        """
        if not self.use_cuda_graph:
            return
        todo = sorted(buckets if buckets is not None else self.config.buckets, reverse=True)
        if memory_fraction is not None:
            if not 0 < memory_fraction <= 1:
                raise ValueError(f"memory_fraction must be in (0, 1], got {memory_fraction}")
            if self.tracker is not None:
                budget = int(memory_fraction * self.tracker.snapshot().free)
                memory_budget = budget if memory_budget is None else min(budget, memory_budget)
        if self._pool is None:
            self._pool = self.backend.graph_pool()
        used = 0
        if self.tracker is not None:
            self.tracker.mark("capture")
        for bucket in todo:
            if memory_budget is not None and used >= memory_budget:
                self.skipped_buckets.append(bucket)
                log.info("bucket %d: capture memory budget spent (%d B), runs eager", bucket, used)
                continue
            used += self._capture_one(bucket)
        self.buffers.load_padding()
        if self.tracker is not None:
            self.tracker.mark("serve")

    def _capture_one(self, bucket: int) -> int:
        self.buffers.load_padding()
        for _ in range(WARMUP_RUNS):
            self._forward_and_sample(bucket)
        self.backend.synchronize()
        # Graph pools count in reserved, not allocated, memory; capture empties the
        # cache on entry, so empty it first or the NVML delta is understated.
        self.backend.release_cached()
        before = self.backend.reserved_bytes() or 0
        nvml_before = self.tracker.snapshot() if self.tracker is not None else None
        with nvtx_range(f"capture:{bucket}"):
            self.graphs[bucket] = self.backend.capture(
                lambda: self._forward_and_sample(bucket), self._pool
            )
        self.backend.synchronize()
        taken = max(0, (self.backend.reserved_bytes() or 0) - before)
        if nvml_before is not None:
            delta = self.tracker.snapshot() - nvml_before
            taken = max(taken, delta.process_used, delta.used)
        self.graph_memory[bucket] = taken
        return taken

    # ---- execute ---------------------------------------------------------------
    def check(self, d: BatchDescriptor) -> None:
        """Refuse a descriptor before any buffer is touched: DescriptorError for a bad
        value or one built for another configuration, StaleDescriptor for one that is
        not a current step of its scheduler. A step exactly as its scheduler issued it
        (``issued_seal``: same arrays, same bytes) is valid by construction and skips
        the full validation; anything else -- edited, hand-built -- gets it. Such a step
        also skips what was already proven: the configuration check once its layout and
        scalars passed it, and the second byte compare of its record check (the seal
        vouches for the descriptor it just proved, in this thread, for that call)."""
        if not isinstance(d, BatchDescriptor):
            raise TypeError(f"execute() takes a BatchDescriptor, got {type(d).__name__}")
        seal = d.issued_seal()
        if seal is None:
            d.validate()
        cfg = self.config
        # a step as issued, of a layout and configuration this executor accepted before,
        # has the same shapes and values: they need no second look
        accepted = self.__dict__.get("_accepted_seal")
        if seal is None or accepted is None or accepted[0] is not cfg or accepted[1] != seal.key:
            for name, want, got in (
                ("block_size", cfg.block_size, d.block_size),
                ("num_kv_blocks", cfg.num_kv_blocks, d.num_kv_blocks),
                ("vocab_size", cfg.vocab_size, d.vocab_size),
                ("max_model_len", cfg.max_model_len, d.max_model_len),
                ("seq_lens", cfg.max_num_seqs, d.seq_capacity),
                ("block_tables", cfg.max_blocks_per_seq, d.block_tables.shape[1]),
                ("copy_src_slots", cfg.max_copy_slots, d.copy_capacity),
            ):
                if got != want:
                    raise DescriptorError(
                        name, 0, f"descriptor built for {got}, this executor's config has {want}"
                    )
            if d.token_capacity not in cfg.buckets:
                raise DescriptorError(
                    "input_ids",
                    0,
                    f"token capacity {d.token_capacity} is not a bucket {cfg.buckets}",
                )
            if seal is not None:
                self._accepted_seal = (cfg, seal.key)
        if not self._copies and (
            seal.copies() if seal is not None else np.count_nonzero(d.copy_lens)
        ):
            r = int(np.flatnonzero(d.copy_lens)[0])
            why = "has no prefix cache" if not cfg.enable_prefix_caching else "has no kv_caches()"
            raise DescriptorError(
                "copy_lens", r, f"a sub-block copy, but this executor's model {why} to copy in"
            )
        if seal is None or type(d) is not BatchDescriptor:
            d.check_current()
            return
        seal.vouch(d)  # proven intact just now: the record check needs no second proof
        try:
            d.check_current()
        finally:
            seal.vouch(None)

    def execute(
        self, descriptor: BatchDescriptor, while_running: Callable[[], None] | None = None
    ) -> StepOutput:
        """Run one step; raises BoundsError (with ``.output``) on a bad index, and
        DescriptorError / StaleDescriptor (nothing run) for a descriptor ``check``
        refuses. ``while_running`` is called on the host while the device computes the
        step (until its event completes; once after an eager CPU step), e.g. to post
        each layer's KV as its flag comes up."""
        self.check(descriptor)
        return self._run(descriptor, while_running)

    def _wait(self, while_running: Callable[[], None]) -> None:
        event = self.backend.record_event()
        while event is not None and not event.query():
            while_running()
        while_running()

    def _run(
        self, d: BatchDescriptor, while_running: Callable[[], None] | None = None
    ) -> StepOutput:
        """The step without the host checks: the device bounds checks still redirect
        and name every bad index (the net behind ``check``)."""
        t0 = time.perf_counter()
        with nvtx_range("prepare", color="green"):
            self.buffers.load(d)
        t1 = time.perf_counter()
        bucket = d.token_capacity
        graph = self.graphs.get(bucket)
        if graph is not None:
            with nvtx_range(f"replay:{bucket}", color="red"):
                graph.replay()
            self.replays[bucket] += 1
        else:
            with nvtx_range(f"eager:{bucket}", color="orange"):
                self._forward_and_sample(bucket)
            self.eager_runs[bucket] += 1
        if while_running is not None:
            with nvtx_range("while-running", color="green"):
                self._wait(while_running)
        with nvtx_range("sample:readback", color="purple"):
            sampled = self.backend.to_numpy(self.tokens).astype(np.int64)
            logprobs = self.backend.to_numpy(self.logprobs)
            errors = self.buffers.read_errors()
        t2 = time.perf_counter()
        d.mark_executed()  # it ran: its KV is written, the scheduler may cache its blocks
        return self._finish(d, sampled, logprobs, errors, graph is not None, t1 - t0, t2 - t1)

    def _finish(self, d, sampled, logprobs, errors, replayed, prep, dev) -> StepOutput:
        sampled[d.num_seqs :] = -1
        sampled[: d.num_seqs][~d.sample_mask[: d.num_seqs]] = -1
        nonfinite: list[str] = []
        if errors["sampler"][0]:
            logits = self.backend.to_numpy(self.logits)
            for r in nonfinite_rows(logits, d.num_seqs):
                nonfinite.append(d.request_ids[r])
                sampled[r] = -1
        problems = bounds_problems(d, errors)
        dropped = {i for _, ids in problems.values() for i in ids}
        for r, rid in enumerate(d.request_ids):
            if rid in dropped:
                sampled[r] = -1
        out = StepOutput(
            sampled=sampled,
            token_ids={
                rid: int(sampled[r]) for r, rid in enumerate(d.request_ids) if sampled[r] >= 0
            },
            bucket=d.token_capacity,
            replayed=replayed,
            nonfinite_request_ids=tuple(nonfinite),
            logprobs={
                rid: float(logprobs[r]) for r, rid in enumerate(d.request_ids) if sampled[r] >= 0
            },
            prepare_s=prep,
            device_s=dev,
        )
        if problems:
            raise BoundsError(problems, out)
        return out
