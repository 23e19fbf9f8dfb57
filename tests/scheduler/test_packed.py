"""The host fast path: a step exactly as issued skips validation (``issued_intact``), any
edit brings it back; retired buffers are reused only once nothing refers to them; the
free list keeps its FIFO order; rows sharing a prefix share one lookup."""

from __future__ import annotations

import dataclasses
import gc
from collections import deque

import numpy as np
import pytest
from graphbatch.scheduler import (
    BatchDescriptor,
    DescriptorError,
    PrefillScheduler,
    Request,
    SchedulerConfig,
    packed,
)
from graphbatch.scheduler.free_list import FreeList


def prompt(n: int, start: int = 1) -> list[int]:
    return [(start + i) % 97 for i in range(n)]


def two_rows(config: SchedulerConfig) -> tuple[PrefillScheduler, BatchDescriptor]:
    s = PrefillScheduler(config)
    s.add_request(Request("a", prompt(8, start=60)))
    s.add_request(Request("b", prompt(40)))
    return s, s.schedule()


def retire(s: PrefillScheduler, d: BatchDescriptor) -> list[str]:
    d.mark_executed()
    return s.update(d, [1] * d.seq_capacity)


# ---- the seal ------------------------------------------------------------------------
def test_a_step_as_issued_is_intact(config):
    _, d = two_rows(config)
    assert d.issued_intact()
    assert dataclasses.replace(d).issued_intact()  # the same arrays and values


def _set(name: str, where, value):
    return lambda d: getattr(d, name).__setitem__(where, value)


@pytest.mark.parametrize(
    "edit",
    [
        _set("input_ids", 3, 5),  # a real row, still in range
        _set("temperature", 0, 0.5),  # a value field
        _set("block_tables", (1, -1), 7),  # a real row's padding column
        _set("query_start_loc", -1, 3),  # padding of a seq field
        _set("copy_src_slots", 0, 5),  # a padding copy entry
    ],
    ids=["input_ids", "temperature", "pad-col", "qsl-pad", "copy-pad"],
)
def test_any_edit_in_place_voids_the_seal(config, edit):
    _, d = two_rows(config)
    edit(d)
    assert not d.issued_intact()


def test_a_padding_row_of_the_block_tables_is_never_loaded(config):
    """The seal covers every byte the executor reads: the block tables' unused rows are
    not among them (the static buffers keep their own padding rows), so an edit there
    neither voids the seal nor reaches the buffers; validate() still refuses it."""
    from graphbatch.executor import GraphExecutor
    from graphbatch.models import TinyConfig, TinyDecoder

    _, d = two_rows(config)
    d.block_tables[3, 0] = config.num_kv_blocks  # a padding row, out of range
    assert d.issued_intact()
    model = TinyConfig(vocab_size=config.vocab_size, hidden_size=16, num_layers=1,
                       num_heads=1, num_kv_heads=1, intermediate_size=16)  # fmt: skip
    ex = GraphExecutor(TinyDecoder(model), config, backend="torch", device="cpu")
    ex.check(d)
    ex.buffers.host["block_tables"][3] = 5  # what an earlier step could have left
    ex.buffers.load(d)
    host = ex.buffers.host["block_tables"]
    assert (host[d.num_seqs :] == 0).all()
    assert np.array_equal(host[: d.num_seqs], d.block_tables[: d.num_seqs])
    with pytest.raises(DescriptorError) as e:
        d.validate()
    assert e.value.field == "block_tables" and e.value.row == (3, 0)


def test_writing_the_same_bytes_back_keeps_it_intact(config):
    _, d = two_rows(config)
    d.slot_mapping[:] = d.slot_mapping.copy()
    assert d.issued_intact()


def test_replaced_reshaped_or_retired_descriptors_are_not_intact(config):
    s, d = two_rows(config)
    assert not dataclasses.replace(d, top_k=d.top_k.copy()).issued_intact()  # equal, not ours
    assert not dataclasses.replace(d, num_tokens=d.num_tokens - 1).issued_intact()
    assert not dataclasses.replace(d, request_ids=("a", "c")).issued_intact()
    assert not dataclasses.replace(d, origin=None).issued_intact()
    other, _ = two_rows(config)
    assert not dataclasses.replace(d, scheduler_id=other.id).issued_intact()
    view = d.positions
    view.shape = (view.shape[0] // 2, 2)  # the same object, another shape
    assert not d.issued_intact()
    view.shape = (view.shape[0] * 2,)
    assert d.issued_intact()
    retire(s, d)
    assert not d.issued_intact()


def test_an_edited_step_is_validated_in_full_and_refused(config):
    _, d = two_rows(config)
    d.block_tables[1, -1] = config.num_kv_blocks  # a real row's padding column, out of range
    assert not d.issued_intact()
    with pytest.raises(DescriptorError) as e:
        d.validate()
    assert e.value.field == "block_tables" and e.value.row == (1, d.block_tables.shape[1] - 1)


def test_the_record_keeps_what_was_issued_whatever_the_descriptor_holds(config):
    s, d = two_rows(config)
    d.sample_mask[1] = True
    with pytest.raises(DescriptorError, match="sample_mask"):
        d.check_current()
    d.sample_mask[1] = False  # the same bytes again: the record agrees
    d.check_current()
    assert retire(s, d) == ["a"]


# ---- the buffer pool -------------------------------------------------------------------
def _serve(s: PrefillScheduler, steps: int, keep: list | None = None) -> list[int]:
    """Buffer ids of ``steps`` steps, each retired at once (dropped unless kept)."""
    bases = []
    for _ in range(steps):
        d = s.schedule()
        if d is None:
            break
        bases.append(id(d.input_ids.base))
        if keep is not None:  # a view of the buffer outlives the descriptor
            keep.append((d.block_tables[0], d.block_tables[0].copy()))
        retire(s, d)
        del d
    return bases


def test_retired_buffers_are_reused_once_nothing_refers_to_them(config):
    s = PrefillScheduler(config)
    for i in range(6):
        s.add_request(Request(f"r{i}", prompt(30, start=i)))
    gc.collect()
    bases = _serve(s, 6)
    assert len(set(bases)) < len(bases)  # reused


def test_a_buffer_still_viewed_is_never_reused(config):
    s = PrefillScheduler(config)
    for i in range(6):
        s.add_request(Request(f"r{i}", prompt(30, start=i)))
    kept: list = []
    bases = _serve(s, 6, keep=kept)
    assert len(set(bases)) == len(bases)
    assert all(np.array_equal(view, then) for view, then in kept)  # never overwritten


def test_a_reused_buffer_holds_clean_padding_whatever_its_last_holder_wrote(config):
    s = PrefillScheduler(config)
    for i in range(6):
        s.add_request(Request(f"r{i}", prompt(30, start=i)))
    seen = set()
    for _ in range(6):
        d = s.schedule()
        if d is None:
            break
        d.validate()  # in full: padding included
        assert d.issued_intact()
        seen.add(id(d.input_ids.base))
        retire(s, d)
        for name in ("block_tables", "slot_mapping", "input_ids", "copy_src_slots"):
            getattr(d, name)[...] = 10**6  # garbage everywhere, after retiring it
        del d
    assert len(seen) < 6


def test_a_large_block_table_is_clean_on_reuse_whatever_was_written():
    """Block tables over ``ZERO_WHOLE`` bytes are not rewritten whole on reuse: the rows
    the last step used are zeroed and the rest proven zero (else zeroed). A reused
    buffer's table is all padding after garbage everywhere in it."""
    cfg = SchedulerConfig(
        max_num_seqs=80, max_num_batched_tokens=64, block_size=16, num_kv_blocks=400,
        max_model_len=16384, vocab_size=100,
    )  # fmt: skip
    assert cfg.max_num_seqs * cfg.max_blocks_per_seq * 4 > packed.ZERO_WHOLE
    s = PrefillScheduler(cfg)
    for i in range(12):
        s.add_request(Request(f"r{i}", prompt(20 + i, start=i)))
    seen = set()
    for step in range(12):
        d = s.schedule()
        if d is None:
            break
        n = d.num_seqs
        assert not np.count_nonzero(d.block_tables[n:])  # every padding row is DUMMY_BLOCK
        for i, rid in enumerate(d.request_ids):  # and the real rows are the requests'
            blocks = s.block_ids(rid)
            assert d.block_tables[i, : len(blocks)].tolist() == blocks
            assert not np.count_nonzero(d.block_tables[i, len(blocks) :])
        seen.add(id(d.input_ids.base))
        retire(s, d)
        d.block_tables[...] = 10**6 + step  # garbage in every row, after retiring it
        del d
    assert len(seen) < step  # buffers were reused


# ---- the free list ---------------------------------------------------------------------
def test_the_free_list_is_a_fifo_across_its_wrap():
    rng = np.random.default_rng(0)
    ref: deque[int] = deque(range(1, 10))
    fl = FreeList(np.arange(1, 10), 10)
    for _ in range(300):
        if rng.random() < 0.5 and ref:
            k = int(rng.integers(0, len(ref) + 1))
            assert fl.take(k).tolist() == [ref.popleft() for _ in range(k)]
        else:
            out = np.asarray([b for b in range(1, 10) if b not in ref][: int(rng.integers(0, 4))])
            fl.put(out.astype(np.int64))
            ref.extend(out.tolist())
        assert list(fl) == list(ref) and len(fl) == len(ref)
    with pytest.raises(ValueError):
        fl.take(len(ref) + 1)


# ---- rows sharing a prefix -------------------------------------------------------------
def test_rows_sharing_a_prefix_share_its_blocks_once_each(config):
    cfg = dataclasses.replace(config, max_num_batched_tokens=64, num_kv_blocks=96)
    s = PrefillScheduler(cfg)
    shared = prompt(24, start=5)
    s.add_request(Request("first", shared + [1, 2]))
    d0 = s.schedule()
    for i in range(3):  # they wait for its blocks, then match again when first scheduled
        s.add_request(Request(f"r{i}", shared + [10 + i, 20 + i, 30 + i]))
    s.add_request(Request("other", [7, 7] + shared))  # the same tokens, another prefix
    assert all(s.num_cached(f"r{i}") == 0 for i in range(3))
    retire(s, d0)
    d = s.schedule()
    assert d.request_ids == ("r0", "r1", "r2", "other")
    first = s.block_ids("first")[:6]
    for i in range(3):
        assert s.block_ids(f"r{i}")[:6] == first
        assert s.num_cached(f"r{i}") == 24
    assert s.num_cached("other") == 0
    for b in first:
        assert s.blocks.refcount(b) == 4  # the first request and the three rows
    d.validate()
    assert d.issued_intact()


# ---- the executor's check ----------------------------------------------------------------
def test_the_executor_validates_only_what_is_not_intact(monkeypatch):
    from .machine_support import CFG, executor

    ex = executor()
    calls: list[int] = []
    real = BatchDescriptor.validate
    monkeypatch.setattr(BatchDescriptor, "validate", lambda d: (calls.append(1), real(d))[1])
    s = PrefillScheduler(CFG)
    s.add_request(Request("a", prompt(12)))
    d = s.schedule()
    ex.check(d)
    assert calls == []  # as issued: valid by construction
    d.positions[0] = 1  # a real row's position, still in range but wrong
    with pytest.raises(DescriptorError, match="positions"):
        ex.check(d)
    assert calls == [1]


def test_a_descriptor_kept_after_retiring_is_never_overwritten(config):
    s = PrefillScheduler(config)
    for i in range(6):
        s.add_request(Request(f"r{i}", prompt(30, start=i)))
    kept = []
    while (d := s.schedule()) is not None:
        kept.append((d, d.input_ids.copy(), d.block_tables.copy()))
        retire(s, d)
    del d
    assert len({id(d.input_ids.base) for d, _, _ in kept}) == len(kept)
    for d, ids, tables in kept:
        assert np.array_equal(d.input_ids, ids) and np.array_equal(d.block_tables, tables)
