"""One prefill instance, several decode instances: a ``KVSender`` per decode receiver
(``EngineConfig.receiver`` lists their addresses; or ``decode_instances`` receiver
processes started here), each request routed to one of them.

Routing: the live link with the fewest outstanding KV bytes (announced, not yet acked or
aborted). Requests differ in size by orders of magnitude (KV bytes grow with the prompt),
so counting requests would pile the long prompts on one instance; outstanding bytes
track what each decode instance is still receiving and must hold. A link that refuses a
request (more blocks than its cache) is skipped for that request.

Faults: a decode instance that dies fails only the requests it held (its sender aborts
them); later requests go to the others. Once its sender has nothing left in flight the
link goes down and is reconnected to the same address with a backoff (0.5 s doubling to
10 s), the authenticated handshake and the KV layout check again.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from graphbatch.transfer import Progress

from .config import EngineConfig
from .kv_link import open_sender, start_local_receiver

log = logging.getLogger("graphbatch.serving")

FIRST_BACKOFF_S, MAX_BACKOFF_S = 0.5, 10.0
RECONNECT_TIMEOUT_S = 2.0


@dataclass(eq=False)
class Link:
    """One decode instance."""

    address: str
    sender: Any  # KVSender; None while down
    local: Any = None  # the ReceiverProcess started here, if any
    key: bytes | None = field(default=None, repr=False)
    outstanding: int = 0  # KV bytes routed here, not yet acked or aborted
    requests: int = 0  # requests sent (acked) through it
    bytes_sent: int = 0
    failures: int = 0  # requests it failed (aborted by the transfer)
    retry_at: float = 0.0
    backoff: float = FIRST_BACKOFF_S
    down: str | None = None  # why it is down

    @property
    def live(self) -> bool:
        return self.sender is not None and not self.sender.disconnected


class DecodeLinks:
    def __init__(
        self,
        config: EngineConfig,
        memory: Any,
        num_kv_blocks: int,
        stack: contextlib.ExitStack,
        layer_flags: Any = None,
    ) -> None:
        self.config, self.memory, self.flags = config, memory, layer_flags
        self.block_bytes = memory.layout.num_tensors * memory.layout.block_bytes
        self._stack = stack
        self.links: list[Link] = []
        if config.receiver is None:
            for _ in range(config.decode_instances):
                local, address, key = start_local_receiver(config, memory, num_kv_blocks, stack)
                self.links.append(Link(address, None, local, key))
        else:
            self.links = [Link(a, None) for a in config.receivers]
        for link in self.links:  # the first connection must work: a typo fails at start
            link.sender = open_sender(config, memory, link.address, link.key, stack, layer_flags)

    # ---- routing ------------------------------------------------------------------
    def route(self, rid: str, num_blocks: int) -> tuple[Link | None, str | None]:
        """Announce ``rid`` to the live link with the fewest outstanding bytes that
        takes it: (link, None), or (None, why no decode instance can take it)."""
        reasons = []
        for link in sorted(self._live(), key=lambda x: x.outstanding):
            try:
                link.sender.announce(rid, num_blocks)
            except ValueError as e:
                reasons.append(f"{link.address}: {e}")
                continue
            link.outstanding += num_blocks * self.block_bytes
            return link, None
        if not reasons:
            return None, "no decode instance is reachable"
        return None, "; ".join(reasons)

    def ended(self, link: Link, num_blocks: int, sent_bytes: int | None) -> None:
        """A routed request ended: sent (its bytes) or failed (None)."""
        link.outstanding -= num_blocks * self.block_bytes
        if sent_bytes is None:
            link.failures += 1
        else:
            link.requests += 1
            link.bytes_sent += sent_bytes

    # ---- every step, on every live link ---------------------------------------------
    def register(self, step: int, entries: dict[Link, list]) -> dict[str, str]:
        """Each live link registers the step (its entries, or none); returns the
        requests whose registration was refused (id -> why; nothing registered there)."""
        refused: dict[str, str] = {}
        for link in self._live():
            mine = entries.get(link, [])
            try:
                link.sender.register(step, mine)
            except ValueError as e:
                link.sender.register(step, [])
                refused.update((entry[0], str(e)) for entry in mine)
        return refused

    def finish(self, step: int, tokens: dict[Link, dict[str, int]]) -> None:
        for link, toks in tokens.items():
            if link.live and toks:
                link.sender.finish(step, toks)

    def ready(self, step: int, event: Any) -> None:
        for link in self._live():
            link.sender.ready(step, event)

    def pump(self) -> None:
        for link in self._live():
            link.sender.pump()

    def collect(self, wait_s: float = 0.0) -> list[tuple[Link, Progress]]:
        """Every link's news (a link that lost its receiver reports its requests
        aborted); down links are retried when their backoff passed."""
        for link in self.links:  # reported all it held last time: down now
            s = link.sender
            if s is not None and s.disconnected and not s.in_flight and not s.decoding:
                self._down(link, s.disconnected)
        self._reconnect()
        busy = [x for x in self.links if x.sender is not None]
        share = wait_s / max(1, sum(1 for x in busy if self._waiting(x)))
        out = []
        for link in busy:
            s = link.sender
            out.append((link, s.wait(share) if share and self._waiting(link) else s.progress()))
        return out

    @property
    def waiting(self) -> bool:
        """Some link has writes or continuations outstanding."""
        return any(self._waiting(x) for x in self.links if x.sender is not None)

    @property
    def layered(self) -> bool:
        return self.flags is not None

    # ---- links going down and coming back ---------------------------------------------
    def _live(self) -> list[Link]:
        return [x for x in self.links if x.live]

    @staticmethod
    def _waiting(link: Link) -> bool:
        return bool(link.sender.in_flight or link.sender.decoding)

    def _down(self, link: Link, why: str) -> None:
        log.warning("decode instance %s is down (%s): retrying in %.1f s",
                    link.address, why, link.backoff)  # fmt: skip
        link.sender.close()
        link.sender, link.down = None, why
        link.retry_at = time.monotonic() + link.backoff

    def _reconnect(self) -> None:
        now = time.monotonic()
        for link in self.links:
            if link.sender is not None or now < link.retry_at:
                continue
            try:
                link.sender = open_sender(
                    self.config, self.memory, link.address, link.key, self._stack, self.flags,
                    connect_timeout_s=RECONNECT_TIMEOUT_S,
                )  # fmt: skip
            except (OSError, RuntimeError) as e:  # TransferError is a RuntimeError
                link.backoff = min(MAX_BACKOFF_S, 2 * link.backoff)
                link.retry_at = time.monotonic() + link.backoff
                log.info("decode instance %s still down: %s", link.address, e)
                continue
            log.warning("decode instance %s is back", link.address)
            link.down, link.backoff = None, FIRST_BACKOFF_S

    def stats(self) -> dict[str, dict[str, int | str | None]]:
        return {
            x.address: {
                "requests": x.requests,
                "bytes": x.bytes_sent,
                "failed": x.failures,
                "down": x.down,
            }
            for x in self.links
        }
