"""Load (or, the first time on a machine, compile) the scheduler's compiled loops before
the first real step.

Numba compiles a loop on its first call and caches the machine code next to its source
(``cache=True``): the first process on a machine pays about 5 s, every later one about
0.2 s to load it. Either way that lands on the first step that takes each path, unless a
serving engine calls ``warm_up()`` at start-up, as it captures its CUDA graphs then.
"""

from __future__ import annotations

import threading

import numpy as np

_done = False
_lock = threading.Lock()


def warm_up() -> None:
    """Run a small workload through a throwaway scheduler, so that every compiled loop a
    step takes (picking and building many rows, marking, retiring with an int64 token
    array, registering runs from the root and after cached blocks) is loaded for the
    argument types real steps pass. Once per process; thread-safe; changes no state but
    its own."""
    global _done
    with _lock:
        if _done:
            return
        from .config import SchedulerConfig
        from .prefill import PrefillScheduler
        from .request import Request

        cfg = SchedulerConfig(
            max_num_seqs=16, max_num_batched_tokens=256, block_size=4, num_kv_blocks=256,
            max_model_len=64, vocab_size=64,
        )  # fmt: skip
        s = PrefillScheduler(cfg)
        shared = list(range(1, 9))  # two blocks every request starts with
        for wave in range(2):  # the second wave's runs continue cached chains
            for i in range(12):  # more rows than FEW_ROWS: the whole-array paths
                s.add_request(Request(f"w{wave}.{i}", shared + [(7 * i + wave) % 64] * 10))
            d = s.schedule()
            d.mark_executed()
            for rid in s.update(d, np.zeros(d.seq_capacity, np.int64)):
                s.release(rid)
        _done = True
