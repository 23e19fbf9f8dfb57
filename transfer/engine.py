"""The transport behind the sender and receiver: a small interface, NIXL under it.

Only what the KV hand-off needs: register a cache, exchange metadata, one WRITE of a
list of (local block, remote block) pairs with a notification, poll it, cancel it, read
notifications. Another engine (Mooncake, a GPU-direct one) fits behind the same calls.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from typing import Any, Protocol

import numpy as np
from graphbatch.kvcache import KVMemory

log = logging.getLogger("graphbatch.transfer")


class TransferError(RuntimeError):
    """The transport failed: the peer is gone or a request was refused."""


class PeerDisconnected(TransferError):
    """The remote side died or closed; nothing in flight to it can complete."""


class TransferEngine(Protocol):
    """What KVSender and KVReceiver need of a transport (NixlEngine implements it)."""

    agent_name: str
    memory: KVMemory

    @property
    def busy(self) -> bool: ...  # writes posted and not released

    def drive(self) -> None: ...  # let in-flight writes move
    def metadata(self) -> bytes: ...  # what a peer needs to write here
    def add_peer(self, metadata: bytes, memory: KVMemory) -> str: ...
    def remove_peer(self, name: str) -> None: ...
    def write(
        self,
        peer: str,
        src: np.ndarray,
        dst: np.ndarray,
        notif: bytes,
        tensors: range | None = None,
    ) -> Any: ...
    def poll(self, handle: Any) -> bool: ...  # True once complete; raises TransferError
    def cancel(self, handle: Any) -> bool: ...  # False: cannot let go of it yet
    def notifications(self) -> dict[str, list[bytes]]: ...
    def close(self) -> None: ...


def _nixl_api() -> Any:
    try:
        from nixl_cu12 import _api
    except ImportError:
        try:
            from nixl import _api  # the meta package picks the CUDA flavour
        except ImportError as e:
            raise TransferError(
                f"NIXL is not installed ({e}); pip install nixl-cu12 (or use --transfer none)"
            ) from None
    if not os.environ.get("NIXL_LOG_LEVEL"):  # NIXL logs INFO to stdout by default
        logging.getLogger("nixl").setLevel(logging.WARNING)
    return _api


def _is_disconnect(e: BaseException) -> bool:
    return "DISCONNECT" in type(e).__name__.upper() or "REMOTE_DISCONNECT" in str(e)


class NixlEngine:
    """One NIXL agent (UCX backend) with one registered KV cache.

    A write only moves while its agent is called into: the owner calls ``drive()``
    often while writes are in flight (NIXL's own progress thread spins a whole core,
    measured idle, so it stays off). Every agent call holds one lock: NIXL's default
    sync mode without its threads is "none", and the owner drives from a thread.
    """

    name = "nixl"

    def __init__(self, memory: KVMemory, agent_name: str | None = None) -> None:
        api = _nixl_api()
        self._lock = threading.RLock()
        self._active: set[Any] = set()  # posted, not released
        self.memory = memory
        self.agent_name = agent_name or f"graphbatch-{uuid.uuid4().hex[:12]}"
        conf = api.nixl_agent_config(
            enable_prog_thread=False, enable_listen_thread=False, backends=["UCX"]
        )
        self.agent = api.nixl_agent(self.agent_name, conf)
        self._reg = self.agent.register_memory(memory.regions(), memory.mem_type)
        self._local = self.agent.prep_xfer_dlist(
            "NIXL_INIT_AGENT", memory.block_descs(), memory.mem_type
        )
        self._remote: dict[str, tuple[Any, KVMemory]] = {}  # agent -> (dlist, its memory)

    @property
    def busy(self) -> bool:
        return bool(self._active)

    def drive(self) -> None:
        """Let UCX move the writes in flight (their state is read by ``poll``)."""
        with self._lock:
            for h in list(self._active):
                try:
                    self.agent.check_xfer_state(h)
                except Exception as e:  # poll() raises it to the owner
                    log.debug("driving a write: %s", e)

    def metadata(self) -> bytes:
        return self.agent.get_agent_metadata()

    def add_peer(self, metadata: bytes, memory: KVMemory) -> str:
        """Learn a remote agent and its cache; returns its agent name."""
        name = self.agent.add_remote_agent(metadata)
        name = name.decode() if isinstance(name, bytes) else str(name)
        dlist = self.agent.prep_xfer_dlist(name, memory.block_descs(), memory.mem_type)
        self._remote[name] = (dlist, memory)
        return name

    def remove_peer(self, name: str) -> None:
        entry = self._remote.pop(name, None)
        if entry is None:
            return
        for call in (
            lambda: self.agent.release_dlist_handle(entry[0]),
            lambda: self.agent.remove_remote_agent(name),
        ):
            try:
                call()
            except Exception as e:  # a dead peer may refuse the goodbye: nothing to free
                log.debug("removing peer %s: %s", name, e)

    def write(
        self,
        peer: str,
        src_blocks: np.ndarray,
        dst_blocks: np.ndarray,
        notif: bytes,
        tensors: range | None = None,
    ):
        """Start one WRITE of ``src_blocks`` into the peer's ``dst_blocks`` in every tensor
        of ``tensors`` (default: all); the peer gets ``notif`` once all of it landed.
        Returns a handle for poll/cancel."""
        dlist, remote = self._remote[peer]
        try:
            with self._lock:
                h = self._post(dlist, remote, src_blocks, dst_blocks, notif, tensors)
        except Exception as e:
            raise (PeerDisconnected if _is_disconnect(e) else TransferError)(
                f"NIXL write to {peer}: {type(e).__name__}: {e}"
            ) from None
        if h is None:
            raise TransferError(f"NIXL write to {peer}: posting failed")
        return h

    def _post(self, dlist, remote, src_blocks, dst_blocks, notif, tensors=None):
        h = self.agent.make_prepped_xfer(
            "WRITE",
            self._local,
            self.memory.indices(src_blocks, tensors),
            dlist,
            remote.indices(dst_blocks, tensors),
            notif,
        )
        if self.agent.transfer(h) == "ERR":
            self.agent.release_xfer_handle(h)
            return None
        self._active.add(h)
        return h

    def poll(self, handle: Any) -> bool:
        """True once the write completed; raises PeerDisconnected / TransferError."""
        try:
            with self._lock:
                state = self.agent.check_xfer_state(handle)
        except Exception as e:
            raise (PeerDisconnected if _is_disconnect(e) else TransferError)(
                f"NIXL transfer state: {type(e).__name__}: {e}"
            ) from None
        if state == "ERR":
            raise TransferError("NIXL transfer failed (state ERR)")
        return state == "DONE"

    def cancel(self, handle: Any) -> bool:
        """Release the handle, cancelling the write if it is still going. False when NIXL
        could not cancel it yet (the source blocks must stay held; try again)."""
        try:
            with self._lock:
                self.agent.release_xfer_handle(handle)
                self._active.discard(handle)
        except Exception as e:
            if _is_disconnect(e):
                self._active.discard(handle)
                return True  # the peer is gone: nothing more will be read or written
            log.warning("NIXL could not release a transfer yet: %s", e)
            return False
        return True

    def notifications(self) -> dict[str, list[bytes]]:
        """New notifications by sending agent name (also drives this agent's progress)."""
        with self._lock:
            out = self.agent.get_new_notifs()
        return {(k.decode() if isinstance(k, bytes) else k): v for k, v in out.items()}

    def close(self) -> None:
        for name in list(self._remote):
            self.remove_peer(name)
        try:
            self.agent.release_dlist_handle(self._local)
            self.agent.deregister_memory(self._reg)
        except Exception as e:
            log.debug("closing NIXL agent: %s", e)
