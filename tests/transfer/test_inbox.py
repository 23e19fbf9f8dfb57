"""The sender's I/O thread: a write posted while it idles is driven at once (wake()),
messages come with their arrival time, a closed connection is reported, not lost."""

from __future__ import annotations

import threading
from multiprocessing import Pipe

from graphbatch.transfer import wire
from graphbatch.transfer.inbox import Inbox


class Engine:
    """Only what the inbox touches: busy and drive()."""

    def __init__(self) -> None:
        self.busy = False
        self.driven = threading.Event()

    def drive(self) -> None:
        self.driven.set()
        self.busy = False  # the write completed


def test_a_write_posted_while_idle_is_driven_without_waiting_out_the_idle_wait():
    here, there = Pipe()
    engine = Engine()
    inbox = Inbox(here, engine, idle_s=3600)  # without wake() nothing drives it for an hour
    try:
        assert not engine.driven.wait(0.2)  # idle: nothing to drive
        engine.busy = True  # a write was posted ...
        inbox.wake()  # ... and said so
        assert engine.driven.wait(30)
    finally:
        inbox.close()  # wake() also ends the idle wait here


def test_messages_carry_their_arrival_and_a_closed_connection_is_reported():
    here, there = Pipe()
    inbox = Inbox(here, Engine(), idle_s=3600)
    try:
        wire.send(there, wire.ACK, rid="r1")
        at, msg = inbox.get(30)
        assert msg == {"type": wire.ACK, "rid": "r1"} and at > 0
        there.close()
        _, err = inbox.get(30)
        assert isinstance(err, EOFError | OSError)
    finally:
        inbox.close()
