"""The KV hand-off between two real processes over NIXL (UCX, loopback): every block
arrives byte-exact, registration and readiness join in any order, and a killed or
frozen receiver aborts exactly the requests it held."""

from __future__ import annotations

import os
import re
import signal
import threading
import time

import numpy as np
import pytest
from graphbatch.kvcache import KVLayout
from graphbatch.transfer import KVSender, ReceiverConfig, ReceiverProcess, TransferError
from hypothesis import given, settings
from hypothesis import strategies as st

from .helpers import KEY, LAYOUT, ShmView, assert_byte_exact, drain, host_cache, shm_name, wait_for

NB_SEND, NB_RECV = 96, 640  # the receiver numbers its own, larger cache


@pytest.fixture(scope="module")
def receiver():
    name = shm_name()
    config = ReceiverConfig(LAYOUT, NB_RECV, verify=True, auth_key=KEY, shm_name=name)
    with ReceiverProcess(config) as rp:
        view = ShmView(name, NB_RECV)
        yield rp, view
        view.close()
    assert rp.final_stats["in_flight_blocks"] == 0  # nothing left allocated and unacked


@pytest.fixture(scope="module")
def sender(receiver):
    cache, mem = host_cache(NB_SEND, seed=1)
    with KVSender(mem, receiver[0].address, verify=True, deadline_s=30, auth_key=KEY) as s:
        yield s, cache


class Steps:
    """Fresh step numbers for the module's one sender."""

    next = 0

    @classmethod
    def take(cls, n: int) -> list[int]:
        out = list(range(cls.next, cls.next + n))
        cls.next += n
        return out


def test_every_block_arrives_byte_exact_in_both_orders(receiver, sender):
    rp, view = receiver
    s, cache = sender
    s0, s1, s2 = Steps.take(3)
    reqs = {
        "a": [3, 9, 4],
        "b": [10],
        "c": list(range(20, 52)),  # 32 blocks
        "d": [95, 1, 60, 61, 62],
    }
    s.ready(s0)  # readiness first: kept, not spent on another step
    assert drain_quiet(s) == ([], [])
    s.register(s1, [("b", reqs["b"], 7)])  # registered, not ready: must not be written
    assert drain_quiet(s) == ([], [])
    assert s.in_flight == ["b"]
    s.register(s0, [("a", reqs["a"], 5)])
    s.ready(s1)
    s.register(s2, [("c", reqs["c"], 1), ("d", reqs["d"], 2)])
    s.ready(s2)
    p = drain(s, 4)
    assert p.aborted == []
    assert sorted(x.request_id for x in p.sent) == ["a", "b", "c", "d"]  # each once
    for x in p.sent:
        assert x.nbytes == len(reqs[x.request_id]) * LAYOUT.num_tensors * LAYOUT.block_bytes
        assert_byte_exact(cache, view.cache, reqs[x.request_id], x.dst_blocks)
    assert s.in_flight == [] and s.bytes_sent >= sum(x.nbytes for x in p.sent)


def drain_quiet(s: KVSender, rounds: int = 20):
    """A few progress rounds that must report nothing."""
    sent, aborted = [], []
    for _ in range(rounds):
        p = s.wait(0.005)
        sent += p.sent
        aborted += p.aborted
    return sent, aborted


event = st.tuples(st.sampled_from(["announce", "register", "ready", "progress"]), st.integers(0, 5))


@settings(max_examples=12, derandomize=True, deadline=None)
@given(st.lists(event, min_size=1, max_size=40), st.randoms(use_true_random=False))
def test_random_interleavings_transfer_every_request_exactly_once(receiver, sender, seq, rnd):
    """Six steps of 0-2 requests each; their announcements (some), registrations,
    readiness signals and progress calls in a random order; afterwards every request
    registered and made ready is sent exactly once and byte-exact, and nothing else."""
    rp, view = receiver
    s, cache = sender
    steps = Steps.take(6)
    free = list(range(1, NB_SEND))
    rnd.shuffle(free)
    plan = {}
    for i, step in enumerate(steps):
        plan[step] = []
        for k in range(rnd.randint(0, 2)):
            n = rnd.randint(1, 6)
            plan[step].append((f"x{step}-{k}", [free.pop() for _ in range(n)], i))
    registered, signalled, announced, sent = set(), set(), set(), []
    for op, i in seq:
        step = steps[i]
        if op == "announce" and step not in registered | announced:
            for rid, blocks, _ in plan[step]:
                s.announce(rid, len(blocks))
            announced.add(step)
        elif op == "register" and step not in registered:
            s.register(step, plan[step])
            registered.add(step)
        elif op == "ready" and step not in signalled:
            s.ready(step)
            signalled.add(step)
        else:
            p = s.progress()
            assert p.aborted == []
            sent += p.sent
    for step in steps:  # complete both streams, in order
        if step not in registered:
            s.register(step, plan[step])
        if step not in signalled:
            s.ready(step)
    want = {rid: blocks for step in steps for rid, blocks, _ in plan[step]}
    p = drain(s, len(want) - len(sent))
    sent += p.sent
    assert p.aborted == []
    assert sorted(x.request_id for x in sent) == sorted(want)  # exactly once each
    for x in sent:
        assert_byte_exact(cache, view.cache, want[x.request_id], x.dst_blocks)


def test_wait_posts_what_can_go_before_it_blocks(receiver, sender):
    """Announced and allocated, then registered and ready: one wait() sends it. Were
    wait() to block for a receiver message first, none could come (nothing is written
    yet) and it would return empty after the whole timeout."""
    s, cache = sender
    (step,) = Steps.take(1)
    s.announce("eager", 3)
    while s.awaiting_blocks:
        s.wait(30)
    s.register(step, [("eager", [7, 8, 9], 1)])
    s.ready(step)
    p = s.wait(60)  # posts, then blocks for the ack
    assert [x.request_id for x in p.sent] == ["eager"] and p.aborted == []
    assert_byte_exact(cache, receiver[1].cache, [7, 8, 9], p.sent[0].dst_blocks)


def test_bad_registrations_change_nothing(receiver, sender):
    s, _ = sender
    (step,) = Steps.take(1)
    bad = [
        ([("ok", [1], 0), ("ok", [2], 0)], "already in flight"),
        ([("e", [], 0)], "non-empty 1-D"),
        ([("e", [NB_SEND], 0)], f"outside \\[0, {NB_SEND}\\)"),
        ([("e", [3, 3], 0)], "repeat"),
        ([("e", [1], 1.5)], "first token"),
        ([("e", [1])], "expected \\(id, blocks, first_token\\)"),
        ([(7, [1], 0)], "is not a str"),
    ]
    for entries, match in bad:
        with pytest.raises(ValueError, match=match):
            s.register(step, entries)
        assert s.in_flight == []
    s.register(step, [])  # the step is still free to register
    s.ready(step)
    assert drain_quiet(s, 3) == ([], [])


def test_a_layout_mismatch_is_refused_at_connect(receiver):
    _, mem = host_cache(8, seed=0, layout=KVLayout(4, 512))
    with pytest.raises(TransferError, match="KV layout .* does not match"):
        KVSender(mem, receiver[0].address, auth_key=KEY)


def test_checksum_mismatch_is_nacked_and_aborted(receiver):
    """The receiver acks only what it got whole: a request whose bytes do not hash to
    the sender's checksum (here: the sender hashed other bytes than it sent) is refused."""
    cache, mem = host_cache(16, seed=2)
    zeros = np.zeros_like(cache)
    lying = type(mem)(mem.layout, mem.bases, mem.num_blocks, reader=lambda t, b: zeros[t, b])
    with KVSender(lying, receiver[0].address, verify=True, auth_key=KEY) as s:
        s.register(0, [("bad", [1, 2], 3)])
        s.ready(0)
        p = drain(s, 1)
    assert p.sent == [] and p.aborted[0].request_id == "bad"
    assert "nack" in p.aborted[0].reason and "checksum" in p.aborted[0].reason


# ---- faults: each test owns its receiver process -------------------------------------
@pytest.fixture
def own_receiver():
    rp = ReceiverProcess(ReceiverConfig(LAYOUT, 64, auth_key=KEY))
    yield rp
    if rp.process.is_alive():
        os.kill(rp.pid, signal.SIGCONT)
    rp.stop()


def test_frozen_receiver_past_the_deadline_aborts_exactly_its_requests(own_receiver):
    cache, mem = host_cache(32, seed=3)
    with KVSender(mem, own_receiver.address, deadline_s=1.0, auth_key=KEY) as s:
        s.register(0, [("warm", [1], 0)])
        s.ready(0)
        assert [x.request_id for x in drain(s, 1).sent] == ["warm"]
        s.register(1, [("frozen-a", [2, 3], 0), ("frozen-b", [4], 0)])
        os.kill(own_receiver.pid, signal.SIGSTOP)  # after the announce, before any reply
        s.ready(1)
        p = drain(s, 2, timeout_s=30)
        assert sorted(a.request_id for a in p.aborted) == ["frozen-a", "frozen-b"]
        assert all("deadline 1 s passed" in a.reason for a in p.aborted)
        os.kill(own_receiver.pid, signal.SIGCONT)
        s.register(2, [("after", [2, 3, 4], 0)])  # the aborted ones' blocks, reused
        s.ready(2)
        p = drain(s, 1)
        assert [x.request_id for x in p.sent] == ["after"] and p.aborted == []
        assert s.in_flight == []
    stats = own_receiver.stop()
    assert stats["in_flight_blocks"] == 0  # the frozen requests' blocks were freed
    assert stats["acked"] == 2 and stats["free"] + stats["retained_blocks"] == 64


def test_killed_receiver_aborts_what_it_held_and_everything_after(own_receiver):
    cache, mem = host_cache(64, seed=4)
    with KVSender(mem, own_receiver.address, deadline_s=30, auth_key=KEY) as s:
        s.register(0, [("big", list(range(1, 64)), 0)])
        s.ready(0)
        s.progress()
        own_receiver.kill()  # SIGKILL while "big" is announced or being written
        p = drain(s, 1)
        assert [a.request_id for a in p.aborted] == ["big"] and p.sent == []
        assert "disconnected" in p.aborted[0].reason
        s.register(1, [("late", [1], 0)])  # nobody to send to: aborted with the reason
        s.ready(1)
        p = drain(s, 1)
        assert [a.request_id for a in p.aborted] == ["late"]
        assert "disconnected" in p.aborted[0].reason
        assert s.in_flight == []


# ---- starting the process: Ctrl-C ---------------------------------------------------------
def _never_ready(config, pipe) -> None:
    """Child: says that it runs (its pid, in a file), then never reports ready."""
    path = os.environ["GB_TEST_STARTED"]
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(path + ".tmp", path)
    time.sleep(600)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_ctrl_c_while_the_receiver_process_starts_kills_it_and_reraises(monkeypatch, tmp_path):
    from graphbatch.transfer import process

    flag = tmp_path / "started"
    monkeypatch.setenv("GB_TEST_STARTED", str(flag))
    monkeypatch.setattr(process, "_main", _never_ready)

    def ctrl_c_once_the_child_runs() -> None:
        wait_for(flag.exists, "the child", 60)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    threading.Thread(target=ctrl_c_once_the_child_runs, daemon=True).start()
    try:
        with pytest.raises(KeyboardInterrupt):
            ReceiverProcess(ReceiverConfig(LAYOUT, 8, auth_key=KEY), start_timeout_s=120)
        pid = int(flag.read_text())
        assert not _alive(pid)  # killed and reaped
    finally:
        if flag.exists() and _alive(pid := int(flag.read_text())):
            os.kill(pid, signal.SIGKILL)


def test_ctrl_c_inside_process_start_is_held_until_the_child_can_be_killed(monkeypatch):
    import multiprocessing.popen_spawn_posix as popen

    pids = []

    class InterruptedLaunch(popen.Popen):
        def _launch(self, process_obj) -> None:
            super()._launch(process_obj)
            pids.append(self.pid)
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # mid-start()
            sum(range(1000))  # bytecode where an unheld interrupt lands

    monkeypatch.setattr(popen, "Popen", InterruptedLaunch)
    try:
        with pytest.raises(KeyboardInterrupt):
            ReceiverProcess(ReceiverConfig(LAYOUT, 8, auth_key=KEY))
        assert not _alive(pids[0])
    finally:
        if pids and _alive(pids[0]):
            os.kill(pids[0], signal.SIGKILL)


def test_the_receiver_process_ignores_ctrl_c_its_parent_stops_it(own_receiver):
    """A terminal's Ctrl-C reaches the whole process group: the child leaves it to its
    parent (which stops it and reads its counters) instead of dying with a traceback."""
    with open(f"/proc/{own_receiver.pid}/status") as f:
        ignored = int(re.search(r"SigIgn:\s*([0-9a-f]+)", f.read()).group(1), 16)
    assert ignored & (1 << (signal.SIGINT - 1))
    os.kill(own_receiver.pid, signal.SIGINT)
    cache, mem = host_cache(8, seed=5)
    with KVSender(mem, own_receiver.address, auth_key=KEY) as s:
        s.register(0, [("after-ctrl-c", [1], 0)])
        s.ready(0)
        assert [x.request_id for x in drain(s, 1).sent] == ["after-ctrl-c"]
    assert own_receiver.stop()["acked"] == 1
