"""The field table and the sampling rules: one definition each, the same at every layer."""

from __future__ import annotations

import numpy as np
import pytest
from graphbatch.sampling import SAMPLING_RULES
from graphbatch.scheduler import DescriptorError, PrefillScheduler, Request, SamplingParams
from graphbatch.scheduler.fields import FIELDS, Axis


def _step(config, sampling: SamplingParams | None = None):
    s = PrefillScheduler(config)
    s.add_request(Request("a", [1, 2, 3], sampling or SamplingParams()))
    return s.schedule()


def test_built_descriptor_follows_the_table(config):
    d = _step(config)
    T, S, MB = d.token_capacity, config.max_num_seqs, config.max_blocks_per_seq
    C = config.max_copy_slots
    for f in FIELDS:
        arr = getattr(d, f.name)
        assert arr.dtype == f.dtype and arr.shape == f.axis.shape(T, S, MB, C), f.name
        if f.axis not in (Axis.TOKENS, Axis.COPIES) and f.name != "query_start_loc":
            want = f.padded(arr[1:].shape, config.block_size, d.num_tokens)
            assert np.array_equal(arr[1:], want), f.name  # row 0 is the request


@pytest.mark.parametrize("rule", SAMPLING_RULES, ids=lambda r: r.param)
def test_rule_bounds_are_accepted_by_every_layer(config, rule):
    for v in (rule.lo, rule.hi):
        d = _step(config, SamplingParams(**{rule.param: v}))
        assert getattr(d, rule.field)[0] == v  # survives the dtype exactly
        d.validate()


@pytest.mark.parametrize("rule", SAMPLING_RULES, ids=lambda r: r.param)
def test_values_past_the_bounds_are_refused_naming_field_and_row(config, rule):
    below = rule.lo / 2 if rule.kind is float and rule.lo > 0 else rule.lo - 1
    with pytest.raises(ValueError, match=rule.param):
        SamplingParams(**{rule.param: below})
    d = _step(config)
    getattr(d, rule.field)[0] = below
    with pytest.raises(DescriptorError) as e:
        d.validate()
    assert e.value.field == rule.field and e.value.row == 0
    assert rule.requirement in str(e.value) and "'a'" in str(e.value)
