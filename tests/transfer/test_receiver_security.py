"""Hostile peers against the decode receiver: a message never kills it (F1), a slow peer
never blocks it (F2), a peer without the key learns nothing and a sender cannot claim
another's request (F3), no peer hoards blocks or queues forever (F4), request ids are per
sender and never leak blocks (F5), a bad welcome is a TransferError (F8); the CLI's key
and memory checks."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from graphbatch.kvcache import KVLayout
from graphbatch.transfer import (
    KVSender,
    ReceiverConfig,
    ReceiverProcess,
    TransferError,
)

from .helpers import (
    KEY,
    LAYOUT,
    RECEIVER_LABEL,
    RawPeer,
    ShmView,
    assert_byte_exact,
    b64,
    drain,
    frame,
    frames_in,
    host_cache,
    mac,
    send_one,
    serving,
    shm_name,
    wait_for,
)


def cfg(num_blocks: int = 32, **kw) -> ReceiverConfig:
    return ReceiverConfig(LAYOUT, num_blocks, auth_key=KEY, **kw)


def dropped(s: KVSender) -> bool:
    s.progress()
    return s.disconnected is not None


def hello(layout: dict) -> bytes:
    return json.dumps({"type": "hello", "agent": "x", "metadata": "", "layout": layout}).encode()


# ---- F1: one message never kills the receiver ------------------------------------------
DIGITS = b"9" * 5000
HOSTILE = {
    "layout-str": hello({"num_tensors": "4", "block_bytes": 1024}),
    "layout-zero": hello({"num_tensors": 0, "block_bytes": 1024}),
    "deep-nesting": b"[" * 100_000,
    "5000-digits": DIGITS,
    "5000-digit-field": b'{"type":"hello","agent":"x","layout":{"num_tensors":' + DIGITS + b"}}",
    "alloc-str-count": b'{"type":"alloc","rid":"x","num_blocks":"2"}',
    "alloc-huge-count": b'{"type":"alloc","rid":"x","num_blocks":1000000000000000000000000}',
    "abort-dict-rid": b'{"type":"abort","rid":{"a":1}}',
    "nan": b'{"type":"alloc","rid":"x","num_blocks":NaN}',
}


@pytest.mark.parametrize("stage", ["before-auth", "as-hello", "after-hello"])
def test_no_message_kills_the_receiver(stage, caplog):
    with serving(cfg()) as r:
        for name, payload in HOSTILE.items():
            p = RawPeer(r.address)
            if stage != "before-auth":
                p.authenticate()
            if stage == "after-hello":
                p.hello()
            p.send_raw(frame(payload))
            got = p.read_until_closed()
            assert stage == "after-hello" or b"welcome" not in got, name
            p.close()
        cache, sent = send_one(r.address, "fine", [3, 4], tok=9)
        assert_byte_exact(cache, r.cache, [3, 4], sent.dst_blocks)
        assert r.counters()["dropped"] == len(HOSTILE)
    assert "Traceback" not in caplog.text


def test_a_bad_notification_drops_its_sender_not_the_receiver():
    with serving(cfg()) as r:
        _, mem = host_cache(8, seed=3)
        with KVSender(mem, r.address, auth_key=KEY) as bad:
            bad.announce("n", 1)
            while bad.awaiting_blocks:
                bad.wait(1)
            dst = bad._early["n"].dst
            h = bad.engine.write(bad.peer, np.array([1]), dst, b"[" * 100_000)
            wait_for(lambda: dropped(bad), "dropping it")
            bad.engine.cancel(h)
        cache, sent = send_one(r.address, "fine", [2])
        assert_byte_exact(cache, r.cache, [2], sent.dst_blocks)
        assert r.counters()["in_flight_blocks"] == 0


# ---- F2: no peer blocks the receiver -------------------------------------------------------
def test_a_peer_stalled_mid_frame_blocks_no_one():
    with serving(cfg(frame_timeout_s=60, handshake_timeout_s=60)) as r:
        staller = RawPeer(r.address)
        staller.authenticate()
        staller.hello()
        staller.send_raw(b"\x00")  # one byte of the next frame's length, then silence
        wait_for(lambda: r.counters()["buffered_bytes"] == 1, "the receiver read the byte")
        cache, sent = send_one(r.address, "fine", [5, 6])
        assert_byte_exact(cache, r.cache, [5, 6], sent.dst_blocks)
        wait_for(lambda: r.counters()["connections"] == 1, "the honest sender's goodbye")
        assert r.counters()["buffered_bytes"] == 1  # the staller: still there, still mid-frame


def test_a_trickling_peer_is_dropped_at_the_frame_deadline(caplog):
    with serving(cfg(frame_timeout_s=0.5)) as r:
        p = RawPeer(r.address)
        p.authenticate()
        p.hello()
        p.send_raw(b"\x00\x00\x00\x40")  # a 64-byte frame, sent one byte per 0.1 s
        start, sent = time.monotonic(), 0
        while not p.closed_within(0.1):
            p.send_raw(b" ")
            sent += 1
            assert sent < 40, "the receiver waited on a frame past its deadline"
        assert time.monotonic() - start >= 0.45
        assert "not completed within 0.5 s" in caplog.text


def test_a_peer_that_never_reads_is_dropped_not_waited_for(caplog):
    with serving(cfg(max_requests_per_peer=1, frame_timeout_s=2)) as r:
        p = RawPeer(r.address, rcvbuf=4096, timeout_s=20)
        p.authenticate()
        p.hello()
        allocs = ({"type": "alloc", "rid": f"f{i}", "num_blocks": 1} for i in range(40_000))
        flood = b"".join(frame(m) for m in allocs)
        t = threading.Thread(target=lambda: _send_quietly(p, flood), daemon=True)
        t.start()  # each alloc past the first is refused; the answers pile up unread
        wait_for(lambda: r.counters()["dropped"] == 1, "dropping the non-reader", 30)
        cache, sent = send_one(r.address, "fine", [1])
        assert_byte_exact(cache, r.cache, [1], sent.dst_blocks)
        t.join(20)
    assert "does not read" in caplog.text


def _send_quietly(p: RawPeer, data: bytes) -> None:
    try:
        p.send_raw(data)
    except OSError:
        pass  # dropped mid-flood


# ---- F3: authentication; a sender writes only what it was lent --------------------------
@pytest.mark.parametrize("how", ["hello-first", "wrong-key", "garbage-answer", "silent"])
def test_a_peer_without_the_key_learns_nothing(how):
    with serving(cfg(handshake_timeout_s=0.5)) as r:
        p = RawPeer(r.address)
        if how == "hello-first":
            p.send_raw(frame(hello(LAYOUT.to_json())))
        elif how == "wrong-key":
            p.answer(p.expect("challenge"), b"not the key, not the key, not it")
        elif how == "garbage-answer":
            p.expect("challenge")
            p.send("answer", nonce="!!", mac=12)
        got = p.read_until_closed()
        for word in (b"welcome", b"metadata", b"bases", b"proof", b"allocated"):
            assert word not in got, word
        assert [m["type"] for m in frames_in(got)] == ["challenge"]
        cache, sent = send_one(r.address, "fine", [2, 3])  # the honest one still gets in
        assert_byte_exact(cache, r.cache, [2, 3], sent.dst_blocks)


def test_a_notification_for_a_request_not_lent_to_that_sender_drops_it():
    """What the check proves: the notifying agent holds a lease under that request id.
    What it cannot: which blocks its WRITE touched (NIXL lands bytes before any notice)."""
    with serving(cfg()) as r:
        cache, mem = host_cache(8, seed=21)
        _, mem_m = host_cache(8, seed=22)
        with KVSender(mem, r.address, auth_key=KEY) as honest:
            with KVSender(mem_m, r.address, auth_key=KEY) as mallory:
                honest.announce("h", 2)
                mallory.announce("m", 2)
                while honest.awaiting_blocks or mallory.awaiting_blocks:
                    honest.wait(0.01)
                    mallory.wait(0.01)
                dst = mallory._early["m"].dst  # its own lent blocks, the honest request's name
                note = json.dumps({"rid": "h", "tok": 0}).encode()
                h = mallory.engine.write(mallory.peer, np.array([1, 2]), dst, note)
                wait_for(lambda: dropped(mallory), "dropping mallory")
                mallory.engine.cancel(h)
            assert r.counters()["in_flight_blocks"] == 2  # the honest lease only
            honest.register(0, [("h", [3, 4], 5)])
            honest.ready(0)
            p = drain(honest, 1)
            assert [x.request_id for x in p.sent] == ["h"]
            assert_byte_exact(cache, r.cache, [3, 4], p.sent[0].dst_blocks)
            assert r.received[(honest.engine.agent_name, "h")].first_token == 5


class FakeReceiver:
    """A listener that plays ``script(conn_socket)`` to one sender and keeps what it got."""

    def __init__(self, script) -> None:
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.address = self.srv.getsockname()
        self.got = b""
        self.thread = threading.Thread(target=self._run, args=(script,), daemon=True)
        self.thread.start()

    def _run(self, script) -> None:
        conn, _ = self.srv.accept()
        conn.settimeout(10)
        try:
            script(conn)
            while chunk := conn.recv(65536):  # keep what the sender says after the script
                self.got += chunk
        except OSError:
            pass
        finally:
            conn.close()

    def read_frame(self, conn) -> dict:
        head = _exact(conn, 4)
        self.got += head
        body = _exact(conn, int.from_bytes(head, "big"))
        self.got += body
        return json.loads(body)


def _exact(conn, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise OSError("closed")
        buf += chunk
    return buf


def _challenge(fake: FakeReceiver, conn, key: bytes, prove: bool) -> None:
    import base64

    rnonce = os.urandom(32)
    conn.sendall(frame({"type": "challenge", "nonce": b64(rnonce)}))
    answer = fake.read_frame(conn)
    snonce = base64.b64decode(answer["nonce"])
    proof = mac(key, RECEIVER_LABEL, snonce, rnonce) if prove else os.urandom(32)
    conn.sendall(frame({"type": "proof", "mac": b64(proof)}))


@pytest.mark.parametrize("receiver", ["bogus-proof", "open"])
def test_a_sender_with_the_key_tells_nothing_to_a_receiver_without_it(receiver):
    fake: FakeReceiver

    def script(conn):
        if receiver == "open":
            conn.sendall(frame({"type": "open"}))
        else:
            _challenge(fake, conn, b"an impostor's guess at the key!!", prove=False)

    fake = FakeReceiver(script)
    _, mem = host_cache(4, seed=1)
    match = "did not prove" if receiver == "bogus-proof" else "does not authenticate"
    with pytest.raises(TransferError, match=match):
        KVSender(mem, fake.address, auth_key=KEY, connect_timeout_s=5)
    fake.thread.join(10)
    assert b"hello" not in fake.got and b"metadata" not in fake.got and b"agent" not in fake.got


def test_auth_is_on_unless_explicitly_opted_out(caplog):
    with pytest.raises(ValueError, match="auth_key"):
        ReceiverConfig(LAYOUT, 8)
    with pytest.raises(ValueError, match="16 bytes"):
        ReceiverConfig(LAYOUT, 8, auth_key=b"short")
    assert KEY not in repr(cfg()).encode() and repr(KEY) not in repr(cfg())
    _, mem = host_cache(4, seed=1)
    with pytest.raises(ValueError, match="auth_key"):
        KVSender(mem, ("127.0.0.1", 1))  # refused before it connects anywhere
    with serving(ReceiverConfig(LAYOUT, 8, allow_unauthenticated=True)) as r:
        assert "unauthenticated" in caplog.text
        with pytest.raises(TransferError, match="does not authenticate"):
            KVSender(mem, r.address, auth_key=KEY)
        with KVSender(mem, r.address, allow_unauthenticated=True) as s:
            s.register(0, [("open", [1], 0)])
            s.ready(0)
            assert [x.request_id for x in drain(s, 1).sent] == ["open"]
    with serving(cfg()) as r:
        with pytest.raises(TransferError, match=r"requires an auth key"):
            KVSender(mem, r.address, allow_unauthenticated=True)
        with pytest.raises(TransferError, match=r"wrong auth key\?"):
            KVSender(mem, r.address, auth_key=b"another key, just as long as it")


# ---- F4: no hoarding, no unbounded queue -------------------------------------------------
def test_a_hoarder_is_capped_and_its_leases_expire():
    with serving(cfg(max_blocks_per_peer=16, lease_s=1.5)) as r:
        hoarder = RawPeer(r.address)
        hoarder.authenticate()
        hoarder.hello()
        hoarder.send("alloc", rid="a", num_blocks=16)
        assert hoarder.expect("allocated")["rid"] == "a"  # never written
        hoarder.send("alloc", rid="b", num_blocks=1)
        msg = hoarder.expect("refused")
        assert msg["rid"] == "b" and "16 blocks" in msg["reason"]
        cache, sent = send_one(r.address, "fine", list(range(16)))  # the other half
        assert_byte_exact(cache, r.cache, list(range(16)), sent.dst_blocks)
        msg = hoarder.expect("refused")  # 1.5 s after it was lent
        assert msg["rid"] == "a" and "lease" in msg["reason"]
        wait_for(lambda: r.counters()["in_flight_blocks"] == 0, "freeing the lease")
        c = r.counters()
        assert c["expired"] == 1 and c["free"] + c["retained_blocks"] == 32


def test_an_alloc_flood_is_refused_not_queued():
    with serving(cfg(8, max_requests_per_peer=4, max_waiting=6)) as r:
        hog, a, b = (RawPeer(r.address) for _ in range(3))
        for p in (hog, a, b):
            p.authenticate()
            p.hello()
        hog.send("alloc", rid="all", num_blocks=8)
        hog.expect("allocated")  # the whole cache: what comes next has to wait
        for i in range(200):
            a.send("alloc", rid=f"x{i}", num_blocks=1)
        for i in range(4, 200):  # x0-x3 wait; the rest are over this sender's limit
            msg = a.expect("refused")
            assert msg["rid"] == f"x{i}" and "4 requests" in msg["reason"], msg
        for i in range(4):
            b.send("alloc", rid=f"y{i}", num_blocks=1)
        for i in (2, 3):  # y0, y1 fill the queue to its 6
            msg = b.expect("refused")
            assert msg["rid"] == f"y{i}" and "queue is full" in msg["reason"], msg
        assert r.counters()["waiting"] == 6
        hog.send("abort", rid="all", reason="done hoarding")
        got = [a.expect("allocated")["rid"] for _ in range(4)]
        assert got == ["x0", "x1", "x2", "x3"]
        assert [b.expect("allocated")["rid"] for _ in range(2)] == ["y0", "y1"]
        assert r.counters()["waiting"] == 0


# ---- F5: request ids are per sender, reuse leaks nothing ---------------------------------
def test_reusing_a_request_id_is_refused_and_leaks_nothing():
    with serving(cfg()) as r:
        cache, mem = host_cache(16, seed=4)
        with KVSender(mem, r.address, auth_key=KEY) as s:
            for step in range(5):
                s.register(step, [("same", [1, 2, 3, 4], step)])
                s.ready(step)
                p = drain(s, 1)
                if step == 0:
                    assert [x.request_id for x in p.sent] == ["same"]
                else:
                    assert "already held" in p.aborted[0].reason
        c = r.counters()
        assert c["free"] + c["retained_blocks"] == 32 and c["retained_blocks"] == 4
        assert r.received[(s.engine.agent_name, "same")].first_token == 0


def test_request_ids_are_scoped_per_sender():
    with serving(cfg()) as r:
        cache_a, mem_a = host_cache(16, seed=5)
        _, mem_b = host_cache(16, seed=6)
        a = KVSender(mem_a, r.address, auth_key=KEY)
        b = KVSender(mem_b, r.address, auth_key=KEY)
        with a, b:
            for s, tok in ((a, 1), (b, 2)):
                s.register(0, [("x", [5, 6], tok)])
                s.ready(0)
                assert [x.request_id for x in drain(s, 1).sent] == ["x"]
            mine = r.received[(a.engine.agent_name, "x")]
            assert mine.first_token == 1 and r.received[(b.engine.agent_name, "x")].first_token == 2
            assert_byte_exact(cache_a, r.cache, [5, 6], mine.blocks)
            r.release(a.engine.agent_name, "x")
        c = r.counters()
        assert c["free"] + c["retained_blocks"] == 32 and c["retained_blocks"] == 2


# ---- F8: a bad welcome is a TransferError naming the receiver ---------------------------
def test_a_bad_welcome_is_a_transfer_error_naming_the_address():
    fake: FakeReceiver

    def script(conn):
        _challenge(fake, conn, KEY, prove=True)
        fake.read_frame(conn)  # hello
        welcome = {"type": "welcome", "metadata": b64(b"not nixl metadata at all"),
                   "layout": LAYOUT.to_json(), "bases": [4096, 8192, 12288, 16384],
                   "num_blocks": 8, "mem_type": "DRAM", "device_id": 0}  # fmt: skip
        conn.sendall(frame(welcome))

    fake = FakeReceiver(script)
    _, mem = host_cache(4, seed=1)
    with pytest.raises(TransferError) as e:
        KVSender(mem, fake.address, auth_key=KEY, connect_timeout_s=5)
    assert str(fake.address[1]) in str(e.value) and "handshake" in str(e.value)


# ---- two processes: three hostile peers next to an honest sender -----------------------
def test_hostile_peers_next_to_an_honest_sender_in_two_processes():
    name = shm_name()
    config = cfg(
        64, shm_name=name, max_blocks_per_peer=40, lease_s=2.0,
        handshake_timeout_s=60, frame_timeout_s=60,
    )  # fmt: skip
    with ReceiverProcess(config) as rp:
        view = ShmView(name, 64)
        try:
            nokey = RawPeer(rp.address)
            nokey.send_raw(frame(hello(LAYOUT.to_json())))
            got = nokey.read_until_closed()
            assert b"welcome" not in got and b"metadata" not in got
            staller = RawPeer(rp.address)
            staller.send_raw(b"\x00")  # one byte of a frame, then silence
            hoarder = RawPeer(rp.address)
            hoarder.authenticate()  # answered after the staller's byte: nothing blocked
            hoarder.hello()
            hoarder.send("alloc", rid="hoard", num_blocks=40)
            assert hoarder.expect("allocated")["rid"] == "hoard"
            hoarder.send("alloc", rid="more", num_blocks=1)
            assert hoarder.expect("refused")["rid"] == "more"
            # 40 blocks: free only once the hoarder's lease expired (64 - 40 < 40)
            cache, sent = send_one(rp.address, "honest", list(range(40)), deadline_s=30)
            assert_byte_exact(cache, view.cache, list(range(40)), sent.dst_blocks)
            assert hoarder.expect("refused")["rid"] == "hoard"
            assert not staller.closed_within(0)  # still held open, harmlessly
        finally:
            view.close()
    stats = rp.final_stats
    assert stats["acked"] == 1 and stats["expired"] == 1 and stats["in_flight_blocks"] == 0
    assert stats["dropped"] >= 1


# ---- the CLI: keys and memory -------------------------------------------------------------
class NeverStarted:
    def __init__(self, *a, **kw) -> None:
        raise AssertionError("the receiver must not start")


@pytest.fixture
def cli(monkeypatch, capsys):
    import graphbatch.transfer
    from graphbatch.cli.main import main

    monkeypatch.delenv("GRAPHBATCH_AUTH_KEY", raising=False)
    monkeypatch.setattr(graphbatch.transfer, "KVReceiver", NeverStarted)

    def run(*argv: str) -> tuple[int, str]:
        code = main(list(argv))
        return code, capsys.readouterr().err

    return run


def test_receive_needs_a_key_or_the_opt_out(cli, tmp_path):
    base = ("receive", "--model", "tiny", "--listen", "127.0.0.1:0")
    code, err = cli(*base)
    assert code == 2 and "--auth-key-file" in err and "--insecure-no-auth" in err
    code, err = cli(*base, "--auth-key-file", str(tmp_path / "missing"))
    assert code == 2 and "--auth-key-file" in err
    (tmp_path / "short").write_bytes(b"abc\n")
    code, err = cli(*base, "--auth-key-file", str(tmp_path / "short"))
    assert code == 2 and "16 bytes" in err
    code, err = cli(*base, "--auth-key-file", str(tmp_path / "short"), "--insecure-no-auth")
    assert code == 2 and "--insecure-no-auth" in err


def test_receive_refuses_a_cache_larger_than_memory(cli, monkeypatch):
    from graphbatch.cli import receive_cmd

    monkeypatch.setattr(receive_cmd, "available_memory", lambda: 1 << 30, raising=False)
    code, err = cli("receive", "--model", "tiny", "--num-blocks", "200000", "--insecure-no-auth")
    # tiny: 4 tensors x 2 KiB a block = 8 KiB; 200,000 blocks = 1,638,400,000 bytes > 1 GiB
    assert code == 2 and "--num-blocks" in err and "1638400000 bytes" in err


def test_receive_of_2_24_blocks_exits_2_instead_of_allocating(cli):
    need = 4 * 2048 * (1 << 24)  # 128 GiB
    if os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") >= need:
        pytest.skip("this machine has 128 GiB")
    code, err = cli(
        "receive", "--model", "tiny", "--num-blocks", str(1 << 24), "--insecure-no-auth"
    )
    assert code == 2 and "--num-blocks" in err and str(need) in err


def _run_args(*argv: str):
    from graphbatch.cli.main import build_parser

    return build_parser().parse_args(["run", *argv])


def _config_problem(*argv: str) -> str | None:
    from graphbatch.cli.run_cmd import engine_config

    try:
        engine_config(_run_args(*argv))
    except ValueError as e:
        return str(e)
    return None


def test_run_needs_a_key_for_a_remote_receiver(monkeypatch, tmp_path):
    monkeypatch.delenv("GRAPHBATCH_AUTH_KEY", raising=False)
    key = tmp_path / "key"
    key.write_bytes(KEY + b"\n")
    remote = ("--receiver", "127.0.0.1:5555")
    assert "--auth-key-file" in _config_problem(*remote)
    assert _config_problem(*remote, "--auth-key-file", str(key)) is None
    assert _config_problem(*remote, "--insecure-no-auth") is None
    assert "--auth-key-file" in _config_problem(*remote, "--auth-key-file", "/nonexistent")
    assert "remote receiver" in _config_problem("--auth-key-file", str(key))
    assert "transfer='nixl'" in _config_problem("--transfer", "none", "--insecure-no-auth")
    monkeypatch.setenv("GRAPHBATCH_AUTH_KEY", KEY.decode())
    assert _config_problem(*remote) is None


def test_run_starts_its_receiver_with_a_fresh_key(monkeypatch):
    import contextlib

    import graphbatch.transfer
    from graphbatch.serving import EngineConfig
    from graphbatch.serving.links import DecodeLinks

    started = []

    class Recording(ReceiverProcess):
        def __init__(self, config, *a, **kw) -> None:
            started.append(config)
            super().__init__(config, *a, **kw)

    monkeypatch.setattr(graphbatch.transfer, "ReceiverProcess", Recording)
    _, mem = host_cache(16, seed=1)
    with contextlib.ExitStack() as stack:
        (link,) = DecodeLinks(EngineConfig(model="tiny"), mem, 16, stack).links
        assert link.sender.remote.num_blocks == 16 and link.local is not None
    (config,) = started
    assert isinstance(config.auth_key, bytes) and len(config.auth_key) == 32
    assert not config.allow_unauthenticated


def test_graphbatch_receive_serves_a_sender_holding_the_key_file(tmp_path):
    key = tmp_path / "key"
    key.write_bytes(KEY + b"\n")
    argv = [sys.executable, "-m", "graphbatch.cli.main", "receive", "--model", "tiny"]
    argv += ["--listen", "127.0.0.1:0", "--num-blocks", "32", "--auth-key-file", str(key)]
    env = {k: v for k, v in os.environ.items() if k != "GRAPHBATCH_AUTH_KEY"}
    log = open(tmp_path / "stderr", "w+")  # noqa: SIM115 (read after the process ends)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    try:
        line = proc.stdout.readline()  # "receiving on HOST:PORT (layout)"
        assert line.startswith("receiving on "), (line, (tmp_path / "stderr").read_text())
        address = line.split()[2]
        cache, mem = host_cache(8, seed=2, layout=KVLayout(4, 2048))
        with KVSender(mem, address, auth_key=KEY) as s:
            s.register(0, [("cli", [1, 2], 3)])
            s.ready(0)
            assert [x.request_id for x in drain(s, 1).sent] == ["cli"]
        with pytest.raises(TransferError, match="wrong auth key"):
            KVSender(mem, address, auth_key=b"x" * 32)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
        log.close()
    assert proc.returncode == 130
