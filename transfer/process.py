"""Run a KVReceiver in its own process (the decode instance's stand-in)."""

from __future__ import annotations

import logging
import multiprocessing as mp
from multiprocessing.connection import Connection

from .receiver import KVReceiver, ReceiverConfig


def _main(config: ReceiverConfig, pipe: Connection) -> None:
    logging.basicConfig(level=logging.WARNING, format="receiver %(levelname)s: %(message)s")
    try:
        receiver = KVReceiver(config)
    except Exception as e:  # the parent shows why it could not start
        pipe.send(("error", f"{type(e).__name__}: {e}"))
        return
    pipe.send(("ready", receiver.address))
    try:
        receiver.serve(stop=pipe)  # stops when the parent says so or dies (pipe EOF)
    except (EOFError, KeyboardInterrupt):
        pass
    finally:
        stats = receiver.counters()
        receiver.close()
        try:
            pipe.send(("stopped", stats))
        except OSError:
            pass


class ReceiverProcess:
    """``start()`` a receiver process; ``address`` is where senders connect."""

    def __init__(self, config: ReceiverConfig, start_timeout_s: float = 60.0) -> None:
        ctx = mp.get_context("spawn")  # no forked CUDA / NIXL state
        self._pipe, child = ctx.Pipe()
        self.process = ctx.Process(target=_main, args=(config, child), daemon=True)
        self.process.start()
        child.close()
        if not self._pipe.poll(start_timeout_s):
            self.kill()
            raise RuntimeError(f"the receiver process did not start within {start_timeout_s} s")
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
        self.address: tuple[str, int] = tuple(value)
        self.final_stats: dict | None = None

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
