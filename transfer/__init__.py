"""KV-cache hand-off from the prefill instance to a decode instance (NIXL)."""

from graphbatch.kvcache import KVLayout, KVMemory  # re-exported for users

from .engine import NixlEngine, PeerDisconnected, TransferEngine, TransferError
from .join import JoinError, StepJoin
from .process import ReceiverProcess
from .receiver import KVReceiver, Received, ReceiverConfig
from .records import Aborted, Decoded, Progress, Sent
from .sender import KVSender

__all__ = [
    "Aborted",
    "Decoded",
    "JoinError",
    "KVLayout",
    "KVMemory",
    "KVReceiver",
    "KVSender",
    "NixlEngine",
    "PeerDisconnected",
    "Progress",
    "Received",
    "ReceiverConfig",
    "ReceiverProcess",
    "Sent",
    "StepJoin",
    "TransferEngine",
    "TransferError",
]
