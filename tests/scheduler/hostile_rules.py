"""The hostile calls of the scheduler state machines (a mixin: the machine holds ``s``,
``other``, ``issued``, ``counter`` and ``_raises_and_changes_nothing``). Each one must
raise and leave the scheduler's full state unchanged."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from graphbatch.scheduler import (
    DescriptorError,
    Request,
    SamplingParams,
    StaleDescriptor,
    UnknownRequest,
)
from hypothesis import strategies as st
from hypothesis.stateful import precondition, rule

from .machine_support import HOSTILE_PROMPTS, HOSTILE_SAMPLING, HOSTILE_TOKENS, executor


class HostileCalls:
    @rule(bad=st.sampled_from(HOSTILE_SAMPLING))
    def add_with_hostile_sampling(self, bad):
        with pytest.raises(ValueError):
            SamplingParams(**bad)  # refused where it is made
        sp = SamplingParams()
        object.__setattr__(sp, next(iter(bad)), next(iter(bad.values())))  # forged
        req = Request(f"x{self.counter}", [1, 2, 3], sp)
        self._raises_and_changes_nothing(lambda: self.s.add_request(req), ValueError)

    @rule(prompt=st.sampled_from(HOSTILE_PROMPTS))
    def add_hostile_prompt(self, prompt):
        req = Request(f"x{self.counter}", prompt)
        self._raises_and_changes_nothing(lambda: self.s.add_request(req), ValueError)

    @precondition(lambda self: self.s.request_ids())
    @rule()
    def add_duplicate_id(self):
        rid = self.s.request_ids()[0]
        req = Request(rid, [1])
        self._raises_and_changes_nothing(lambda: self.s.add_request(req), ValueError)

    @rule(what=st.sampled_from(["unknown id", "not a request"]))
    def hostile_misc(self, what):
        if what == "unknown id":
            self._raises_and_changes_nothing(lambda: self.s.abort("nobody"), UnknownRequest)
        else:
            self._raises_and_changes_nothing(lambda: self.s.add_request("r1"), TypeError)

    @precondition(lambda self: self.issued)
    @rule(k=st.integers(0, 100), bad=st.sampled_from(HOSTILE_TOKENS), row=st.integers(0, 3))
    def update_with_hostile_tokens(self, k, bad, row):
        d = self.issued[k % len(self.issued)]
        tokens = [1] * d.seq_capacity
        tokens[row % d.num_seqs] = bad
        if isinstance(bad, bool):
            tokens = np.array(tokens, dtype=object)
        self._raises_and_changes_nothing(
            lambda: self.s.update(d, tokens), ValueError, StaleDescriptor
        )

    @precondition(lambda self: self.issued)
    @rule(k=st.integers(0, 100), row=st.integers(0, 3))
    def flip_sample_mask(self, k, row):
        # a finishing row cleared, or a mid-prompt row flagged: refused everywhere
        d = self.issued[k % len(self.issued)]
        mask = d.sample_mask.copy()
        mask[row % d.num_seqs] ^= True
        bad = dataclasses.replace(d, sample_mask=mask)
        with pytest.raises(DescriptorError, match="sample_mask"):
            bad.validate()
        with pytest.raises(DescriptorError, match="sample_mask"):
            executor().check(bad)
        self._raises_and_changes_nothing(
            lambda: self.s.update(bad, [3] * d.seq_capacity), DescriptorError, StaleDescriptor
        )

    @rule(n=st.integers(1, 20))
    def foreign_descriptor(self, n):
        rid = f"f{self.counter}"
        self.counter += 1
        self.other.add_request(Request(rid, [1] * n))
        d = self.other.schedule()
        d.mark_executed()  # another scheduler's step: this one learns nothing
        self._raises_and_changes_nothing(lambda: self.s.update(d, [1] * 4), StaleDescriptor)
        with pytest.raises(StaleDescriptor):
            self.s.check_current(d)
        self.other.abort(rid)

    @precondition(lambda self: self.issued)
    @rule(k=st.integers(0, 100))
    def execute_stale_descriptor(self, k):
        d = self.issued[k % len(self.issued)]
        try:
            self.s.check_current(d)
        except StaleDescriptor:
            with pytest.raises(StaleDescriptor):
                executor().check(d)  # refused before any buffer is touched
        else:
            executor().check(d)

    @precondition(lambda self: self.issued)
    @rule(k=st.integers(0, 100), field=st.sampled_from(["logits_indices", "query_start_loc"]))
    def execute_corrupted_descriptor(self, k, field):
        d = self.issued[k % len(self.issued)]
        arr = getattr(d, field).copy()
        arr[0] = -1 if field == "logits_indices" else -5
        bad = dataclasses.replace(d, **{field: arr})
        with pytest.raises(DescriptorError, match=field):
            executor().check(bad)
