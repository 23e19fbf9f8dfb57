"""The sender's I/O thread: reads the receiver's messages as they arrive (so an ack is
timed when it came, not when the serving loop next looked) and drives NIXL while writes
are in flight. It changes no sender state: the caller's thread takes from the queue."""

from __future__ import annotations

import queue
import socket
import threading
import time
from multiprocessing.connection import Connection, wait
from typing import Any

from . import wire
from .engine import TransferEngine


class Inbox:
    def __init__(self, conn: Connection, engine: TransferEngine, idle_s: float = 0.05) -> None:
        self._conn, self._engine, self._idle_s = conn, engine, idle_s
        self._queue: queue.Queue[tuple[float, Any]] = queue.Queue()  # (arrival, msg | error)
        self._closing = False
        # wake() interrupts the idle wait: a write posted meanwhile must not sit
        # undriven until the wait times out (measured: 4 MiB requests one by one ran at
        # 1.1-3.8 GB/s without it, bimodal by where the 20 ms wait happened to be)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread = threading.Thread(target=self._run, daemon=True, name="kv-sender-io")
        self._thread.start()

    def _run(self) -> None:
        # While a write is in flight it spins: UCX moves a write only inside agent calls
        # (measured: polling every 0.5 ms ran 4 MiB writes at 0.3 GB/s, spinning at the
        # bare-NIXL rate). sleep(0) hands the GIL to the serving thread on each turn.
        while not self._closing:
            busy = self._engine.busy
            try:
                if busy:
                    ready = self._conn.poll(0)
                else:
                    ready = self._conn in wait([self._conn, self._wake_r], self._idle_s)
                    self._clear_wake()
                if ready:
                    self._queue.put((time.perf_counter(), wire.recv(self._conn)))
                    continue
            except (EOFError, OSError, wire.ProtocolError) as e:
                if not self._closing:
                    self._queue.put((time.perf_counter(), e))  # the caller names it
                return
            if busy:
                self._engine.drive()
                time.sleep(0)

    def wake(self) -> None:
        """A write was posted: start driving it now."""
        try:
            self._wake_w.send(b"w")
        except BlockingIOError:
            pass  # the buffer is full of wake-ups already: the thread will wake

    def _clear_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass

    @property
    def pending(self) -> int:
        """Messages (and errors) queued, not yet taken."""
        return self._queue.qsize()

    def get(self, timeout_s: float) -> tuple[float, Any] | None:
        try:
            return self._queue.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def get_nowait(self) -> tuple[float, Any] | None:
        try:
            return self._queue.get_nowait()
        except queue.Empty:
            return None

    def close(self) -> None:
        self._closing = True
        self.wake()
        self._thread.join(5)
        self._wake_r.close()
        self._wake_w.close()
