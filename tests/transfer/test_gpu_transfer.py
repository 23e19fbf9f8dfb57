"""KV transfer out of GPU memory: the executor's cache registers as VRAM, the step's
readiness is a CUDA event, and every block lands byte-exact at the receiver (which keeps
its cache in host memory). Skips on a CPU machine; see docs/gpu-notes.md."""

from __future__ import annotations

import numpy as np
import pytest
from graphbatch.scheduler import PrefillScheduler
from graphbatch.transfer import KVSender, ReceiverConfig, ReceiverProcess

from ..executor.helpers import SCHED, make_executor
from .helpers import KEY, ShmView, assert_byte_exact, shm_name
from .test_shared_prefix_send import prefill

pytestmark = pytest.mark.gpu


@pytest.fixture(params=["torch", "paddle"])
def gpu_executor(request):
    if request.param == "paddle":
        paddle = pytest.importorskip("paddle")
        if not paddle.device.is_compiled_with_cuda():
            pytest.skip("paddle is the CPU wheel: install paddlepaddle-gpu")
    return make_executor(request.param)


def test_vram_blocks_arrive_byte_exact_after_the_step_event(gpu_executor):
    ex = gpu_executor
    mem = ex.kv_memory()
    assert mem.mem_type == "VRAM"
    assert hasattr(ex.step_event(), "query")  # a CUDA event, recorded after the step
    sched = PrefillScheduler(SCHED)
    rng = np.random.default_rng(3)
    name = shm_name()
    with ReceiverProcess(
        ReceiverConfig(mem.layout, 64, verify=True, shm_name=name, auth_key=KEY)
    ) as rp:
        view = ShmView(name, 64, mem.layout)
        with KVSender(mem, rp.address, verify=True, auth_key=KEY) as s:
            for rid, n in (("g1", 70), ("g2", 5)):
                sent = prefill(sched, ex, s, rid, rng.integers(0, SCHED.vocab_size, n).tolist())
                blocks = sched.block_ids(rid)
                src = np.stack(
                    [mem.read(t, np.arange(mem.num_blocks)) for t in range(mem.layout.num_tensors)]
                )
                assert_byte_exact(src, view.cache, blocks, sent.dst_blocks)
                sched.release(rid)
        view.close()
    assert rp.final_stats["acked"] == 2 and rp.final_stats["nacked"] == 0
