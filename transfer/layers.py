"""Layer-wise sending for ``KVSender``: a registered request's layers go out as soon as
the step's layer flags show them written (``executor.LayerFlags``) and the receiver
said where they land -- while the rest of the forward runs -- coalesced into one WRITE
per run of ready layers, each notifying its tensor range. Once every layer is posted,
the step's KV is complete and the first token is known, one FINISH on the control
channel carries the token (and checksum, decode info); the receiver acks once it has
every tensor *and* the FINISH, in whichever order they come.

Readiness is read, not pushed: a layer flag shows the last step that wrote the layer,
and flags only grow. A layer that became ready before its request was registered (the
layer-0-before-registration order) is still ready when it is: nothing is dropped, and
a flag is only ever compared with the request's own step, so it cannot be applied to
another request."""

from __future__ import annotations

import json
import time
from typing import Any

TENSORS_PER_LAYER = 2  # K and V (kv_caches() order: K0, V0, K1, V1, ...)


class LayerPoster:
    def __init__(self, flags: Any, engine: Any, num_tensors: int) -> None:
        if flags.num_layers * TENSORS_PER_LAYER != num_tensors:
            raise ValueError(
                f"{flags.num_layers} layer flags for a KV layout of {num_tensors} tensors "
                f"(expected {num_tensors // TENSORS_PER_LAYER} layers: K and V each)"
            )
        self.flags, self.engine = flags, engine
        self.num_layers = flags.num_layers

    def post_ready(self, peer: str, r: Any) -> None:
        """Post the request's layers that are written and not posted yet (TransferError
        from the engine propagates: the caller fails the request)."""
        if r.dst is None or r.abort is not None:
            return
        ready = self.num_layers if r.ready_at is not None else self.flags.ready(r.step)
        if ready <= r.layers_posted:
            return
        a, b = r.layers_posted, ready
        tensors = range(a * TENSORS_PER_LAYER, b * TENSORS_PER_LAYER)
        notif = json.dumps({"rid": r.rid, "t": [tensors.start, tensors.stop]}).encode()
        r.handles.append(self.engine.write(peer, r.blocks, r.dst, notif, tensors))
        if a == 0:
            r.posted_at = time.perf_counter()
        r.layers_posted = b

    def poll(self, r: Any) -> None:
        """Release each write that completed (the sender's I/O thread drives NIXL while
        any handle is held: a finished one would keep it spinning until the ack);
        ``r.written`` once every layer is posted and every write completed."""
        for h in list(r.handles):
            if self.engine.poll(h) and self.engine.cancel(h):  # complete: frees the handle
                r.handles.remove(h)
        r.written = r.layers_posted == self.num_layers and not r.handles

    def finish_due(self, r: Any) -> bool:
        """Every layer posted, the step's KV complete and the first token known."""
        return (
            not r.final
            and r.abort is None
            and r.layers_posted == self.num_layers
            and r.ready_at is not None
            and r.first_token is not None
        )

    def release(self, r: Any) -> bool:
        """Let go of every write handle; False while NIXL cannot (the source blocks stay
        held: try again)."""
        while r.handles:
            if not self.engine.cancel(r.handles[-1]):
                return False
            r.handles.pop()
        return True


def finish_fields(r: Any, checksum: str | None) -> dict[str, Any]:
    fields: dict[str, Any] = {"rid": r.rid, "tok": r.first_token}
    if checksum is not None:
        fields["sum"] = checksum
    if r.decode is not None:
        fields["dec"] = r.decode
    return fields
