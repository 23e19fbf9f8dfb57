"""Model configs and the executor's constructor refuse None / 0 / wrong types by name
(they used to raise ZeroDivisionError or AttributeError)."""

from __future__ import annotations

import pytest
from graphbatch.executor import GraphExecutor
from graphbatch.models import ModelConfig, TinyConfig, TinyDecoder

from ..executor.helpers import MODEL, SCHED

REAL = dict(architecture="llama", vocab_size=64, hidden_size=64, num_layers=1, num_heads=4,
            num_kv_heads=2, head_dim=16, intermediate_size=128)  # fmt: skip


@pytest.mark.parametrize("field", ["num_heads", "num_kv_heads", "hidden_size", "num_layers"])
@pytest.mark.parametrize("value", [0, None, -1, 2.0, True])
def test_tiny_config_names_the_bad_field(field, value):
    with pytest.raises(ValueError, match=f"TinyConfig.{field} must be an int > 0"):
        TinyConfig(**{field: value})


@pytest.mark.parametrize("field", ["num_heads", "num_kv_heads", "head_dim", "vocab_size"])
@pytest.mark.parametrize("value", [0, None])
def test_model_config_names_the_bad_field(field, value):
    with pytest.raises(ValueError, match=f"ModelConfig.{field} must be an int > 0"):
        ModelConfig(**{**REAL, field: value})


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(head_dim=48), "power of two"),
        (dict(num_kv_heads=3), "multiple of num_kv_heads"),
        (dict(architecture="gpt2"), "architecture must be one of"),
        (dict(dtype="float64"), "dtype must be one of"),
        (dict(rms_eps=0.0), "rms_eps"),
    ],
)
def test_model_config_refuses_what_the_decoder_cannot_run(kw, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**{**REAL, **kw})


def test_executor_refuses_a_non_model_and_a_missing_config():
    with pytest.raises(TypeError, match="lacks bind, forward"):
        GraphExecutor(None, SCHED, backend="torch")
    with pytest.raises(TypeError, match="scheduler_config must be a SchedulerConfig"):
        GraphExecutor(TinyDecoder(MODEL), None, backend="torch")
