from __future__ import annotations

import numpy as np
import pytest
from graphbatch.scheduler import DescriptorError, PrefillScheduler, Request


@pytest.fixture
def descriptor(config):
    s = PrefillScheduler(config)
    s.add_request(Request("a", list(range(1, 8))))
    s.add_request(Request("b", list(range(1, 4))))
    return s.schedule()


def test_padding_rows_hold_safe_values(descriptor, config):
    d = descriptor
    assert d.num_tokens == 10 and d.token_capacity == 16 and d.seq_capacity == config.max_num_seqs
    assert np.all(d.slot_mapping[10:] < config.block_size)  # dummy block
    assert np.all(d.input_ids[10:] == 0) and np.all(d.positions[10:] == 0)
    assert list(d.query_start_loc) == [0, 7, 10, 10, 10]
    assert np.all(d.seq_lens[2:] == 0) and not d.sample_mask[2:].any()
    assert np.all(d.top_p[2:] == 1) and np.all(d.temperature[2:] == 1)
    assert np.all(d.block_tables[2:] == 0) and np.all(d.logits_indices[2:] == 0)
    assert list(d.logits_indices[:2]) == [6, 9]
    d.validate()


def test_slot_mapping_follows_block_table(descriptor, config):
    d = descriptor
    bs = config.block_size
    for t in range(d.num_tokens):
        s = int(np.searchsorted(d.query_start_loc[: d.num_seqs + 1], t, side="right")) - 1
        pos = d.positions[t]
        assert d.slot_mapping[t] == d.block_tables[s, pos // bs] * bs + pos % bs


@pytest.mark.parametrize(
    "field,row,value,owner",
    [
        ("slot_mapping", 3, 10**6, "'a'"),
        ("slot_mapping", 12, -1, "padding"),
        ("input_ids", 8, 100, "'b'"),
        ("block_tables", 1, 64, "'b'"),
        ("positions", 0, 64, "'a'"),
        ("logits_indices", 0, 16, "'a'"),
        ("top_p", 1, 0.0, "'b'"),
        ("temperature", 0, -1.0, "'a'"),
    ],
)
def test_validate_names_field_row_and_request(descriptor, field, row, value, owner):
    arr = getattr(descriptor, field)
    arr[row] = value
    with pytest.raises(DescriptorError) as e:
        descriptor.validate()
    assert e.value.field == field
    assert e.value.row == (row if arr.ndim == 1 else (row, 0))  # a table names its cell
    assert owner in str(e.value)


def test_bad_rows_lists_every_offender(descriptor):
    descriptor.slot_mapping[[1, 5]] = -7
    assert descriptor.bad_rows("slot_mapping") == [1, 5]
    assert descriptor.request_of_token(5) == "a" and descriptor.request_of_token(15) is None


def test_validate_checks_layout(descriptor):
    descriptor.query_start_loc[3] = 9
    with pytest.raises(DescriptorError, match="query_start_loc"):
        descriptor.validate()
