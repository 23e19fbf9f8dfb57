"""StepJoin: a step's registration and readiness, joined in either order, each request
released exactly once, never before its step's KV is complete."""

from __future__ import annotations

import threading

import pytest
from graphbatch.transfer import JoinError, StepJoin
from hypothesis import given, settings
from hypothesis import strategies as st


class Event:
    """A readiness event whose completion the test decides (the CUDA-event protocol)."""

    def __init__(self) -> None:
        self.done = False

    def query(self) -> bool:
        return self.done


def test_ready_before_registration_is_kept_until_its_registration():
    j: StepJoin[str] = StepJoin()
    j.ready(0)
    j.ready(1)
    assert j.pop() == [] and j.pending == ([], [0, 1])
    j.register(1, ["b"])
    assert j.pop() == [(1, "b")]  # step 0's signal is not spent on step 1's request
    j.register(0, ["a"])
    assert j.pop() == [(0, "a")] and j.pending == ([], [])


def test_registration_before_ready_waits_for_the_event():
    j: StepJoin[str] = StepJoin()
    ev = Event()
    j.register(0, ["a", "b"])
    assert j.pop() == []
    j.ready(0, ev)
    assert j.pop() == []  # signalled, but the GPU has not finished the step
    ev.done = True
    assert j.pop() == [(0, "a"), (0, "b")]
    assert j.pop() == []


@pytest.mark.parametrize("first", ["register", "ready"])
def test_a_step_is_joined_once(first):
    j: StepJoin[str] = StepJoin()
    j.register(0, ["a"]) if first == "register" else j.ready(0)
    with pytest.raises(JoinError, match="step 0 was already"):
        j.register(0, ["x"]) if first == "register" else j.ready(0)
    j.ready(0) if first == "register" else j.register(0, ["a"])
    assert j.pop() == [(0, "a")]
    for again in (lambda: j.register(0, ["a"]), lambda: j.ready(0)):
        with pytest.raises(JoinError, match="step 0 was already"):
            again()


@pytest.mark.parametrize("step", [-1, 1.5, "3", True, None])
def test_bad_step_numbers_are_refused(step):
    j: StepJoin[str] = StepJoin()
    with pytest.raises(JoinError, match="step must be an int >= 0"):
        j.register(step, [])
    with pytest.raises(JoinError, match="step must be an int >= 0"):
        j.ready(step)
    assert j.pending == ([], [])


def test_an_event_without_query_is_refused():
    with pytest.raises(JoinError, match="no query"):
        StepJoin().ready(0, object())


def test_two_threads_forced_into_both_orders():
    """Registration on one thread, readiness on another; barriers force which comes first."""
    for ready_first in (True, False):
        j: StepJoin[int] = StepJoin()
        first_done = threading.Event()

        def registrar(ready_first=ready_first, j=j, first_done=first_done):
            for step in range(50):
                if ready_first:
                    first_done.wait()
                j.register(step, [step])
            if not ready_first:
                first_done.set()

        def signaller(ready_first=ready_first, j=j, first_done=first_done):
            if not ready_first:
                first_done.wait()
            for step in range(50):
                j.ready(step)
            if ready_first:
                first_done.set()

        threads = [threading.Thread(target=registrar), threading.Thread(target=signaller)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert j.pop() == [(s, s) for s in range(50)]


ops = st.lists(
    st.tuples(st.sampled_from(["register", "ready", "finish", "pop"]), st.integers(0, 7)),
    max_size=80,
)


@settings(max_examples=400, derandomize=True, deadline=None)
@given(ops)
def test_any_interleaving_releases_each_request_exactly_once_after_both(seq):
    """Random interleavings of registrations, readiness signals, event completions and
    pops over 8 steps: each request comes out once, with its own step, only after its
    step was registered, signalled and its event completed."""
    j: StepJoin[str] = StepJoin()
    events = {s: Event() for s in range(8)}
    registered, signalled, out = set(), set(), []
    for op, s in seq:
        if op == "register" and s not in registered:
            j.register(s, [f"r{s}a", f"r{s}b"])
            registered.add(s)
        elif op == "ready" and s not in signalled:
            j.ready(s, events[s])
            signalled.add(s)
        elif op == "finish":
            events[s].done = True
        else:
            for step, item in j.pop():
                assert item.startswith(f"r{step}")
                assert step in registered and step in signalled and events[step].done
                out.append(item)
    for s in range(8):  # finish everything: all that was both registered and signalled
        events[s].done = True
    out += [item for _, item in j.pop()]
    both = registered & signalled
    assert sorted(out) == sorted(f"r{s}{x}" for s in both for x in "ab")
    assert j.pending == (sorted(registered - signalled), sorted(signalled - registered))
