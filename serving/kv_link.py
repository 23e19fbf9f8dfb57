"""The engine's link to the decode instance: a ``KVSender`` to the configured receiver,
or to a receiver process started here with a fresh key only these two processes hold."""

from __future__ import annotations

import contextlib
import secrets

from .config import EngineConfig


def open_sender(config: EngineConfig, memory, num_kv_blocks: int, stack: contextlib.ExitStack):
    """(sender, the local ReceiverProcess or None); both closed by ``stack``.
    TransferError / RuntimeError when the receiver cannot be started or reached."""
    from graphbatch.transfer import KVSender, ReceiverConfig, ReceiverProcess
    from graphbatch.transfer.auth import key_for_cli

    insecure = config.insecure_no_auth
    local = None
    if config.receiver is None:
        key = config.auth_key or (None if insecure else secrets.token_bytes(32))
        rcfg = ReceiverConfig(
            memory.layout,
            config.receiver_num_blocks or num_kv_blocks,
            verify=config.verify_transfer,
            auth_key=key,
            allow_unauthenticated=insecure,
            lease_s=max(60.0, 2 * config.transfer_deadline_s),  # outlives the sender's deadline
            **_decoding(config),
        )
        local = stack.enter_context(ReceiverProcess(rcfg))
        address = local.address
    else:
        key = config.auth_key or key_for_cli(config.auth_key_file, insecure)
        address = config.receiver
    sender = KVSender(
        memory,
        address,
        verify=config.verify_transfer,
        deadline_s=config.transfer_deadline_s,
        auth_key=key,
        allow_unauthenticated=insecure,
    )
    stack.callback(sender.close)
    return sender, local


def _decoding(config: EngineConfig) -> dict:
    """A local receiver decodes with this engine's model, on its backend."""
    if not config.decode_tokens:
        return {}
    return dict(
        decode_tokens=config.decode_tokens,
        model=config.model,
        dtype=config.dtype,
        model_seed=config.seed,
        backend=config.backend,
        block_size=config.block_size,
        decode_max_num_seqs=config.limits()[1],
        decode_margins=config.decode_margins,
    )
