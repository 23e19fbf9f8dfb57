"""The control channel's shared secret: where it comes from, and the HMAC challenge.

On connect the receiver speaks first: a random nonce (``challenge``). The sender answers
with its own nonce and HMAC-SHA256(key, sender label + both nonces); the receiver checks
it and proves that it holds the key too (``proof``: the other label, the nonces the other
way round) before it says anything else. A peer without the key gets the challenge and
nothing more: no welcome, no addresses, no NIXL metadata. This authenticates the start
of a connection only: later messages are neither signed nor encrypted, so a party that
can rewrite the TCP stream could still take it over -- keep the control port on loopback
or a trusted network.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping

ENV = "GRAPHBATCH_AUTH_KEY"
MIN_KEY_BYTES = 16
NONCE_BYTES = 32
_SENDER, _RECEIVER = b"graphbatch-kv/sender\0", b"graphbatch-kv/receiver\0"


def check_key(key: object, allow_unauthenticated: bool, who: str) -> None:
    """ValueError/TypeError unless ``key`` is a usable secret or the opt-out is explicit."""
    if key is None:
        if not allow_unauthenticated:
            raise ValueError(
                f"{who} needs auth_key (the shared secret, >= {MIN_KEY_BYTES} bytes) "
                "or an explicit allow_unauthenticated=True"
            )
        return
    if not isinstance(key, bytes):
        raise TypeError(f"{who}: auth_key must be bytes, got {type(key).__name__}")
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"{who}: auth_key must be at least {MIN_KEY_BYTES} bytes, got {len(key)}")


def load_key_file(path: str) -> bytes:
    """The key in ``path`` (its bytes, trailing whitespace dropped), ValueError if unusable."""
    try:
        with open(path, "rb") as f:
            key = f.read(1 << 16).rstrip()
    except OSError as e:
        raise ValueError(f"cannot read {path!r}: {e.strerror or e}") from None
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"the key in {path!r} has {len(key)} bytes, < {MIN_KEY_BYTES} bytes")
    return key


def key_from_env(environ: Mapping[str, str] = os.environ) -> bytes | None:
    """``$GRAPHBATCH_AUTH_KEY`` as bytes; None when unset or empty."""
    value = environ.get(ENV, "")
    if not value:
        return None
    key = value.encode()
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"{ENV} has {len(key)} bytes, at least {MIN_KEY_BYTES} needed")
    return key


def key_for_cli(auth_key_file: str | None, insecure_no_auth: bool) -> bytes | None:
    """The key a command runs with: ``--auth-key-file``, else ``$GRAPHBATCH_AUTH_KEY``;
    None only with ``--insecure-no-auth``. ValueError naming the flag otherwise."""
    if insecure_no_auth:
        if auth_key_file is not None:
            raise ValueError("--insecure-no-auth and --auth-key-file exclude each other")
        return None
    if auth_key_file is not None:
        try:
            return load_key_file(auth_key_file)
        except ValueError as e:
            raise ValueError(f"--auth-key-file: {e}") from None
    key = key_from_env()
    if key is None:
        raise ValueError(
            f"no auth key: give --auth-key-file PATH or set {ENV} "
            "(or --insecure-no-auth to run without one)"
        )
    return key


def new_nonce() -> bytes:
    return secrets.token_bytes(NONCE_BYTES)


def sender_mac(key: bytes, receiver_nonce: bytes, sender_nonce: bytes) -> bytes:
    return hmac.new(key, _SENDER + receiver_nonce + sender_nonce, hashlib.sha256).digest()


def receiver_mac(key: bytes, receiver_nonce: bytes, sender_nonce: bytes) -> bytes:
    return hmac.new(key, _RECEIVER + sender_nonce + receiver_nonce, hashlib.sha256).digest()


def check_answer(
    key: bytes, receiver_nonce: bytes, sender_nonce: bytes, mac: bytes
) -> bytes | None:
    """The receiver's proof if ``mac`` answers its challenge, else None."""
    if len(sender_nonce) != NONCE_BYTES or not matches(
        sender_mac(key, receiver_nonce, sender_nonce), mac
    ):
        return None
    return receiver_mac(key, receiver_nonce, sender_nonce)


def matches(expected: bytes, got: bytes) -> bool:
    return hmac.compare_digest(expected, got)  # constant time: no byte-by-byte guessing
