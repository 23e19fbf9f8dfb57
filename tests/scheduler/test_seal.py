"""The seal's proofs, byte by byte: the in-place compares (``bytearray == memoryview``)
catch a one-byte edit anywhere in what they cover, first and last byte included; a
reused buffer's block tables are zero however its last holder left them (zeroed whole,
or proven zero by ``memcmp``, or by numpy without ctypes); the executor's shortcuts --
its configuration check done once per layout and configuration, its record check
vouched for by the proof it just made -- never let an edit, a foreign configuration or a
copy it cannot run through."""

from __future__ import annotations

import dataclasses
import gc
import threading

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
from graphbatch.scheduler.packed import Seal


def prompt(n: int, start: int = 1) -> list[int]:
    return [(start + i) % 97 for i in range(n)]


def issue(config: SchedulerConfig, *lens: int) -> tuple[PrefillScheduler, BatchDescriptor]:
    s = PrefillScheduler(config)
    for i, n in enumerate(lens):
        s.add_request(Request(f"r{i}", prompt(n, start=7 * i)))
    return s, s.schedule()


def retire(s: PrefillScheduler, d: BatchDescriptor) -> None:
    d.mark_executed()
    s.update(d, [1] * d.seq_capacity)


def seal_of(d: BatchDescriptor) -> Seal:
    seal = d.issued_seal()
    assert type(seal) is Seal
    return seal


# ---- every covered byte ------------------------------------------------------------------
def test_a_one_byte_edit_anywhere_in_the_written_bytes_voids_the_seal(config):
    _, d = issue(config, 9, 21)
    seal = seal_of(d)
    raw = d.input_ids.base
    head, rows_end = seal.head, seal.layout.rows_end
    assert 0 < rows_end < head < raw.shape[0]  # the unused table rows lie past head
    for at in range(head):  # the first byte and the last one included
        was = int(raw[at])
        raw[at] = was ^ 0xFF
        assert not d.issued_intact(), at
        assert seal.rows_intact(d) is (at >= rows_end), at
        raw[at] = was
    assert d.issued_intact() and seal.rows_intact(d)


def test_the_unused_table_rows_are_not_covered_and_never_loaded(config):
    _, d = issue(config, 9, 21)
    raw = d.input_ids.base
    seal = seal_of(d)
    raw[seal.head :] = 0xFF  # the executor reads only the step's rows of the tables
    assert d.issued_intact() and seal.rows_intact(d)


def test_the_record_check_refuses_an_edited_row_at_either_end(config):
    _, d = issue(config, 9, 21)
    for name in ("seq_lens", "sample_mask", "context_lens"):
        a = getattr(d, name)
        for row in (0, d.num_seqs - 1):
            was = a[row].copy()
            a[row] = not was if a.dtype == np.bool_ else was + 1
            with pytest.raises(DescriptorError, match=name):
                d.check_current()
            a[row] = was
    d.check_current()


def test_the_records_rows_are_read_only_and_private(config):
    s, d = issue(config, 9, 21)
    rec = s._outstanding[d.step]
    for a in (rec.starts, rec.ends, rec.finishes, rec.copy_lens, rec.copy_src, rec.copy_dst):
        assert not a.flags.writeable
        with pytest.raises(ValueError):
            a.flags.writeable = True
    d.seq_lens[:] = 0  # the descriptor's are the caller's
    assert rec.ends.tolist() == [9, 21]


def test_issued_seal_and_issued_intact(config):
    s, d = issue(config, 9, 21)
    assert d.issued_intact() is True and type(d.issued_seal()) is Seal
    d.top_k[0] += 1
    assert d.issued_intact() is False and d.issued_seal() is None
    d.top_k[0] -= 1
    assert d.issued_seal() is not None
    assert dataclasses.replace(d, origin=None).issued_seal() is None
    retire(s, d)
    assert d.issued_intact() is False and d.issued_seal() is None


def test_an_equal_scalar_that_is_another_object_is_validated(config):
    _, d = issue(dataclasses.replace(config, vocab_size=1000), 9, 21)
    d.vocab_size = int(str(d.vocab_size))  # equal, not the object issued: not proven
    assert d.vocab_size == 1000 and not d.issued_intact()
    d.validate()


# ---- padding of a reused buffer ----------------------------------------------------------
@pytest.fixture
def wide() -> SchedulerConfig:
    """Block tables of 1 MiB: past ZERO_WHOLE, a reused buffer's rows past the last
    step's are proven zero, not rewritten."""
    cfg = SchedulerConfig(
        max_num_seqs=64,
        max_num_batched_tokens=64,
        block_size=4,
        num_kv_blocks=256,
        max_model_len=16384,
        vocab_size=100,
        token_buckets=(64,),
    )
    assert cfg.max_num_seqs * cfg.max_blocks_per_seq * 4 > packed.ZERO_WHOLE
    return cfg


def _garbage(name: str, tables: np.ndarray, used_rows: int) -> None:
    rest = tables[used_rows:].reshape(-1).view(np.uint8)
    if name == "first":
        rest[0] = 1
    elif name == "last":
        rest[-1] = 1
    elif name == "middle":
        rest[rest.shape[0] // 2 + 3] = 0x80
    elif name == "every-word-alike":  # each word equals the next: only the first is 0-tested
        rest[:] = 1
    elif name == "used-rows":
        tables[:used_rows] = 7


@pytest.mark.parametrize("memcmp", [True, False], ids=["memcmp", "numpy"])
@pytest.mark.parametrize("where", ["first", "last", "middle", "every-word-alike", "used-rows"])
def test_a_reused_buffer_has_zero_table_padding_whatever_was_left(wide, monkeypatch, memcmp, where):
    if not memcmp:
        monkeypatch.setattr(packed, "_MEMCMP", None)
    elif packed._MEMCMP is None:
        pytest.skip("no C memcmp here")
    s = PrefillScheduler(wide)
    for i in range(3):
        s.add_request(Request(f"r{i}", prompt(40, start=i)))
    d = s.schedule()
    base, n = id(d.input_ids.base), d.num_seqs
    retire(s, d)
    _garbage(where, d.block_tables, n)
    del d
    gc.collect()
    d = s.schedule()
    assert id(d.input_ids.base) == base  # reused
    assert not np.count_nonzero(d.block_tables[d.num_seqs :])
    d.validate()
    assert d.issued_intact()


@pytest.mark.parametrize("memcmp", [True, False], ids=["memcmp", "numpy"])
def test_the_zero_test_itself(wide, monkeypatch, memcmp):
    if not memcmp:
        monkeypatch.setattr(packed, "_MEMCMP", None)
    elif packed._MEMCMP is None:
        pytest.skip("no C memcmp here")
    lay = packed.layout(64, wide.max_num_seqs, wide.max_blocks_per_seq, wide.max_copy_slots, 4)
    raw, _ = lay.new(64)
    entry = lay.handoff[0]
    lay.handoff[0] = None
    raw[lay.tables :] = 0
    used = lay.head(3)
    for at in (used, used + 7, used + 8, lay.total - 8, lay.total - 1):
        raw[at] = 3
        assert not lay._zero(entry, used), at
        raw[at] = 0
        assert lay._zero(entry, used)
    raw[used:] = 5
    assert not lay._zero(entry, used)
    raw[used:] = 0
    raw[used - 1] = 9  # before ``used``: not this test's bytes
    assert lay._zero(entry, used)
    assert lay._zero(entry, lay.total)  # nothing left to test


def test_padding_of_steps_of_different_sizes_in_one_bucket(config):
    cfg = dataclasses.replace(config, token_buckets=(32,))
    s = PrefillScheduler(cfg)
    seen = set()
    for i, n in enumerate((5, 17, 3, 32, 9)):
        s.add_request(Request(f"r{i}", prompt(n, start=i)))
        d = s.schedule()
        assert d.token_capacity == 32 and d.num_tokens == n
        assert d.query_start_loc[0] == 0 and np.all(d.query_start_loc[2:] == n)
        d.validate()  # every padding, query_start_loc's included
        seen.add(id(d.input_ids.base))
        retire(s, d)
        d.query_start_loc[:] = 99  # what a last holder may leave
        del d
    assert len(seen) < 5


# ---- references that keep a buffer from reuse ---------------------------------------------
@pytest.mark.parametrize(
    "hold",
    [
        lambda d: memoryview(d.slot_mapping),
        lambda d: memoryview(d.input_ids.base),
        lambda d: d.block_tables[1:],
        lambda d: d.seeds,
        lambda d: np.frombuffer(d.temperature, np.uint8),
    ],
    ids=["memoryview-of-a-view", "memoryview-of-the-buffer", "slice", "view", "frombuffer"],
)
def test_anything_still_reaching_a_buffer_keeps_it_from_reuse(config, hold):
    s = PrefillScheduler(config)
    for i in range(6):
        s.add_request(Request(f"r{i}", prompt(30, start=i)))
    d = s.schedule()
    held, base = hold(d), id(d.input_ids.base)
    retire(s, d)
    del d
    gc.collect()
    seen = []
    while (d := s.schedule()) is not None:
        seen.append(id(d.input_ids.base))
        retire(s, d)
        del d
    assert base not in seen
    del held


# ---- the executor's shortcuts -------------------------------------------------------------
def _executor(config: SchedulerConfig):
    from graphbatch.executor import GraphExecutor
    from graphbatch.models import TinyConfig, TinyDecoder

    model = TinyConfig(vocab_size=config.vocab_size, hidden_size=16, num_layers=1,
                       num_heads=1, num_kv_heads=1, intermediate_size=16)  # fmt: skip
    return GraphExecutor(TinyDecoder(model), config, backend="torch", device="cpu")


def test_the_vouch_ends_with_the_check_and_an_edit_after_it_is_caught(config):
    ex = _executor(config)
    s, d = issue(config, 9, 21)
    seal = seal_of(d)
    ex.check(d)
    assert seal.vouched is None
    d.sample_mask[0] = not d.sample_mask[0]  # after the check: the record checks see it
    assert not seal.rows_intact(d)
    d.mark_executed()  # refused quietly: the rows are not the ones issued
    assert not s._outstanding[d.step].executed
    with pytest.raises(DescriptorError, match="sample_mask"):
        s.update(d, [1] * d.seq_capacity)


def test_a_vouch_holds_only_for_its_descriptor_and_thread(config):
    _, d = issue(config, 9, 21)
    seal = seal_of(d)
    d.seq_lens[1] += 1  # an edit the vouch must not hide from anyone else
    seal.vouch(dataclasses.replace(d))  # another descriptor object
    assert not seal.rows_intact(d)
    with pytest.raises(DescriptorError, match="seq_lens"):
        d.check_current()
    t = threading.Thread(target=seal.vouch, args=(d,))  # another thread's
    t.start()
    t.join()
    assert seal.vouched[0] is d and not seal.rows_intact(d)
    with pytest.raises(DescriptorError, match="seq_lens"):
        d.check_current()
    seal.vouch(d)  # this thread's: trusted (as GraphExecutor.check does, right after
    assert seal.rows_intact(d)  # proving the descriptor intact)
    seal.vouch(None)
    assert not seal.rows_intact(d)


def test_the_executor_checks_every_configuration_it_has_not_accepted(config):
    ex = _executor(config)
    s, d = issue(config, 9, 21)
    ex.check(d)
    ex.check(d)  # accepted: the same layout and configuration
    other = dataclasses.replace(config, num_kv_blocks=config.num_kv_blocks + 1)
    s1, foreign = issue(other, 9, 21)
    assert foreign.issued_intact()
    with pytest.raises(DescriptorError, match="num_kv_blocks"):
        ex.check(foreign)
    longer = dataclasses.replace(config, max_model_len=config.max_model_len + config.block_size)
    s2, foreign = issue(longer, 9, 21)
    with pytest.raises(DescriptorError, match="max_model_len"):
        ex.check(foreign)
    ex.check(d)
    assert s.id != s1.id != s2.id


def test_a_reshaped_view_fails_the_proof_and_the_configuration_check_runs(config):
    ex = _executor(config)
    _, d = issue(config, 9, 21)
    ex.check(d)
    tables = d.block_tables
    tables.shape = (tables.shape[1], tables.shape[0])  # same bytes, another shape
    assert d.issued_seal() is None
    with pytest.raises(DescriptorError):
        ex.check(d)


def test_a_step_that_copies_is_refused_by_an_executor_that_cannot_copy():
    # b extends a by a partial block: it copies a's tail slots (sub-block reuse)
    cfg = SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=64, block_size=8,
                          num_kv_blocks=48, max_model_len=128, vocab_size=100,
                          enable_prefix_caching=True)  # fmt: skip
    ex = _executor(cfg)
    s = PrefillScheduler(cfg)
    a = prompt(41)
    s.add_request(Request("a", a))
    d = s.schedule()
    ex.check(d)
    retire(s, d)
    s.add_request(Request("b", a + prompt(9, start=50)))
    d = s.schedule()
    assert d.copy_lens[0] > 0 and seal_of(d).copies()
    ex.check(d)  # it has copy targets
    ex._copies = []  # as a model without kv_caches() leaves it
    with pytest.raises(DescriptorError, match="copy_lens"):
        ex.check(d)


def test_a_view_reshaped_after_retiring_is_refused_and_its_buffer_dropped(config):
    s = PrefillScheduler(config)
    for i in range(6):
        s.add_request(Request(f"r{i}", prompt(9, start=i)))
    d = s.schedule()
    base, tables = id(d.input_ids.base), d.block_tables
    retire(s, d)
    tables.shape = (tables.shape[1], tables.shape[0])  # by a holder, after retiring
    del d, tables
    gc.collect()
    d = s.schedule()
    assert id(d.input_ids.base) == base  # reused: its geometry is not checked there ...
    assert not d.issued_intact()  # ... but proven here: it fails, is validated, refused
    with pytest.raises(DescriptorError, match="block_tables"):
        d.validate()
    retire(s, d)
    del d
    gc.collect()
    while (d := s.schedule()) is not None:
        assert id(d.input_ids.base) != base  # never again
        assert d.issued_intact()
        retire(s, d)
        del d
