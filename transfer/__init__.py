"""KV-cache hand-off from the prefill instance to a decode instance (NIXL)."""

from .engine import NixlEngine, PeerDisconnected, TransferEngine, TransferError
from .join import JoinError, StepJoin
from .layout import KVLayout, KVMemory
from .process import ReceiverProcess
from .receiver import KVReceiver, Received, ReceiverConfig
from .records import Aborted, Progress, Sent
from .sender import KVSender

__all__ = [
    "Aborted",
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
