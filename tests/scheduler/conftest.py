from __future__ import annotations

import pytest
from graphbatch.scheduler import SchedulerConfig


@pytest.fixture
def config() -> SchedulerConfig:
    return SchedulerConfig(
        max_num_seqs=4,
        max_num_batched_tokens=32,
        block_size=4,
        num_kv_blocks=64,
        max_model_len=64,
        vocab_size=100,
    )
