"""The engine's connections to decode instances: a ``KVSender`` to a receiver address
(its key: ``auth_key``, ``--auth-key-file`` or ``$GRAPHBATCH_AUTH_KEY``), and receiver
processes started here, each with a fresh key only these two processes hold."""

from __future__ import annotations

import contextlib
import secrets

from .config import EngineConfig


def start_local_receiver(
    config: EngineConfig, memory, num_kv_blocks: int, stack: contextlib.ExitStack
):
    """(ReceiverProcess, its address "host:port", its key); stopped by ``stack``.
    RuntimeError when it cannot start."""
    from graphbatch.transfer import ReceiverConfig, ReceiverProcess

    insecure = config.insecure_no_auth
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
    return local, f"{local.address[0]}:{local.address[1]}", key


def open_sender(
    config: EngineConfig,
    memory,
    address: str,
    key: bytes | None,
    stack: contextlib.ExitStack,
    layer_flags=None,
    connect_timeout_s: float = 30.0,
):
    """A KVSender to ``address`` (``key``: a local receiver's; None: the configured
    one), closed by ``stack``. With ``layer_flags`` (``GraphExecutor.enable_layer_flags()``)
    it sends layer by layer. TransferError when it cannot connect or handshake."""
    from graphbatch.transfer import KVSender
    from graphbatch.transfer.auth import key_for_cli

    insecure = config.insecure_no_auth
    if key is None and not insecure:
        key = config.auth_key or key_for_cli(config.auth_key_file, insecure)
    sender = KVSender(
        memory,
        address,
        verify=config.verify_transfer,
        deadline_s=config.transfer_deadline_s,
        auth_key=key,
        allow_unauthenticated=insecure,
        connect_timeout_s=connect_timeout_s,
        layer_flags=layer_flags,
    )
    stack.callback(sender.close)
    return sender


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
