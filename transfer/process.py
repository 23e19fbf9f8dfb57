"""Run a KVReceiver in its own process (the decode instance's stand-in)."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import signal
import threading
from collections.abc import Iterator
from multiprocessing.connection import Connection

from .receiver import KVReceiver, ReceiverConfig


def _main(config: ReceiverConfig, pipe: Connection) -> None:
    # Ctrl-C in a terminal reaches the whole process group; this process is its parent's
    # to stop (the pipe, or a kill), so it ignores SIGINT. The parent started it with
    # SIGINT blocked: one that came while Python started up is dropped here, not raised
    # as a traceback from the middle of an import.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    logging.basicConfig(level=logging.WARNING, format="receiver %(levelname)s: %(message)s")
    try:
        receiver = KVReceiver(config)
    except Exception as e:  # the parent shows why it could not start
        _tell(pipe, ("error", f"{type(e).__name__}: {e}"))
        return
    if not _tell(pipe, ("ready", receiver.address)):  # the parent is gone already
        receiver.close()
        return
    try:
        receiver.serve(stop=pipe)  # stops when the parent says so or dies (pipe EOF)
    except (EOFError, OSError, KeyboardInterrupt):
        pass
    finally:
        stats = receiver.counters()
        receiver.close()
        _tell(pipe, ("stopped", stats))


def _tell(pipe: Connection, msg: tuple) -> bool:
    try:
        pipe.send(msg)
    except OSError:
        return False
    return True


@contextlib.contextmanager
def _sigint_held() -> Iterator[None]:
    """Hold Ctrl-C while the child is forked: it starts with SIGINT blocked (and ignores
    it once it runs), and the KeyboardInterrupt is raised here after ``start()``
    returned, when the child is known and can be killed -- not inside ``start()``."""
    main = threading.current_thread() is threading.main_thread()
    got: list[int] = []
    old = signal.signal(signal.SIGINT, lambda sig, frame: got.append(sig)) if main else None
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})  # inherited by the child
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # runs a pending one
        if main:
            signal.signal(signal.SIGINT, old if old is not None else signal.default_int_handler)
    if got:
        raise KeyboardInterrupt


class ReceiverProcess:
    """Start a receiver process; ``address`` is where senders connect. A Ctrl-C (or any
    error) while it starts kills the child and re-raises: no process is left behind."""

    def __init__(self, config: ReceiverConfig, start_timeout_s: float = 60.0) -> None:
        ctx = mp.get_context("spawn")  # no forked CUDA / NIXL state
        self._pipe, child = ctx.Pipe()
        self.process = ctx.Process(target=_main, args=(config, child), daemon=True)
        self.final_stats: dict | None = None
        try:
            with _sigint_held():
                self.process.start()
            child.close()
            self.address: tuple[str, int] = self._wait_ready(start_timeout_s)
        except BaseException:
            self._abandon(child)
            raise

    def _wait_ready(self, timeout_s: float) -> tuple[str, int]:
        if not self._pipe.poll(timeout_s):
            raise RuntimeError(f"the receiver process did not start within {timeout_s} s")
        try:
            kind, value = self._pipe.recv()
        except EOFError:
            self.process.join(10)
            raise RuntimeError(
                f"the receiver process exited while starting (exit code {self.process.exitcode})"
            ) from None
        if kind != "ready":
            self.process.join(5)
            raise RuntimeError(f"the receiver process failed to start: {value}")
        return tuple(value)

    def _abandon(self, child: Connection) -> None:
        if self.process.pid is not None:  # started: kill it and reap it
            self.process.kill()
            self.process.join(10)
        for conn in (child, self._pipe):
            with contextlib.suppress(OSError):
                conn.close()

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, timeout_s: float = 10.0) -> dict | None:
        """Ask it to finish; returns its counters (acked, nacked, free blocks)."""
        if self.process.is_alive():
            try:
                self._pipe.send(("stop", None))
                if self._pipe.poll(timeout_s):
                    self.final_stats = self._pipe.recv()[1]
            except (OSError, EOFError):
                pass
            self.process.join(timeout_s)
        if self.process.is_alive():
            self.kill()
        return self.final_stats

    def kill(self) -> None:
        self.process.kill()
        self.process.join(10)

    def __enter__(self) -> ReceiverProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
