"""``EngineConfig``: every default of a prefill instance, in one place.

The scheduler's and executor's knobs carry vLLM's names; ``graphbatch run`` generates
its flags from these fields (``cli/engine_flags.py``), so a default changes here only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from graphbatch.scheduler import SchedulerConfig
from graphbatch.scheduler.request import MAX_SEED

# Per model: (max_num_batched_tokens, max_num_seqs, max_model_len) when not given.
# The random-weight presets are sized to their cost; checkpoints use CHECKPOINT_LIMITS.
MODEL_LIMITS = {"tiny": (256, 16, 1024), "small": (2048, 64, 4096), "large": (8192, 64, 4096)}
CHECKPOINT_LIMITS = (1024, 16, 2048)
TRANSFERS = ("nixl", "none")
TRANSFER_MODES = ("layer", "request")
BACKENDS = ("paddle", "torch")
DTYPES = ("float32", "float16", "bfloat16")


class ConfigError(ValueError):
    """A field of ``EngineConfig`` holds a bad value; ``field`` names it."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"EngineConfig.{field_name}: {message}")
        self.field = field_name
        self.message = message


def _opt(help: str, **cli: Any) -> dict[str, Any]:
    """Field metadata: its ``graphbatch run`` flag's help, plus ``aliases`` (older flag
    names), ``choices``, ``negative_alias`` (a flag that sets a True default to False),
    ``flag`` (when the flag is not ``--field-name``) and ``nargs``."""
    return {"help": help, **cli}


@dataclass(frozen=True)
class EngineConfig:
    """What a ``PrefillEngine`` runs: the model, where, the scheduler's limits and the
    KV transfer. ``None`` limits are resolved from the model (``MODEL_LIMITS``)."""

    model: str = field(
        default="smollm2",
        metadata=_opt(
            "smollm2 (SmolLM2-135M-Instruct, the default), a random-weight preset "
            "(tiny, small, large), an HF folder or a .gguf file"
        ),
    )
    backend: str = field(default="paddle", metadata=_opt("framework", choices=BACKENDS))
    device: str | None = field(
        default=None, metadata=_opt("cpu, cuda:0 / gpu:0 (default: GPU if any)")
    )
    dtype: str | None = field(
        default=None,
        metadata=_opt("model dtype (checkpoints: float32 by default)", choices=DTYPES),
    )
    seed: int = field(
        default=0, metadata=_opt("seeds the presets' weights and requests that bring none")
    )
    # ---- scheduler (vLLM's names) ----
    max_num_seqs: int | None = field(
        default=None, metadata=_opt("rows of one batch (the capture capacity)")
    )
    max_num_batched_tokens: int | None = field(
        default=None, metadata=_opt("token budget of one step", aliases=("--budget",))
    )
    max_model_len: int | None = field(default=None, metadata=_opt("longest prompt, in tokens"))
    block_size: int = field(default=16, metadata=_opt("tokens per KV block"))
    num_kv_blocks: int | None = field(
        default=None,
        metadata=_opt("KV blocks (default: max_num_seqs prompts of max_model_len, + 1)"),
    )
    max_num_requests: int | None = field(
        default=None,
        metadata=_opt("requests held at once, prefilling or in transfer (default 4 x rows)"),
    )
    enable_prefix_caching: bool = field(
        default=True,
        metadata=_opt(
            "reuse cached KV of shared prompt prefixes", negative_alias="--no-prefix-cache"
        ),
    )
    long_prefill_token_threshold: int = field(
        default=0, metadata=_opt("tokens of one request per step at most (0: off)")
    )
    cuda_graph_sizes: tuple[int, ...] | None = field(
        default=None,
        metadata=_opt("token buckets captured as CUDA graphs (default: a ladder)", nargs="+"),
    )
    enforce_eager: bool = field(
        default=False, metadata=_opt("run every step eager", aliases=("--no-cuda-graph",))
    )
    # ---- KV transfer to the decode instance ----
    transfer: str = field(
        default="nixl",
        metadata=_opt(
            "send each request's KV to a decode receiver over NIXL, or none (blocks are "
            "freed once the first token is sampled)",
            choices=TRANSFERS,
        ),
    )
    transfer_mode: str = field(
        default="layer",
        metadata=_opt(
            "layer: each layer's KV goes out as soon as it is written, while the rest of "
            "the step runs; request: one write per request after its step",
            choices=TRANSFER_MODES,
        ),
    )
    receiver: str | None = field(
        default=None,
        metadata=_opt(
            "HOST:PORT of a running 'graphbatch receive', or several, comma-separated: "
            "each request goes to one decode instance (default: start them locally)"
        ),
    )
    decode_instances: int = field(
        default=1, metadata=_opt("decode receivers started here (without --receiver)")
    )
    receiver_num_blocks: int | None = field(
        default=None, metadata=_opt("KV blocks of a receiver started here (default: num_kv_blocks)")
    )
    transfer_deadline_s: float = field(
        default=30.0,
        metadata=_opt(
            "fail a request whose KV the receiver has not acked S seconds after it was complete",
            flag="--transfer-deadline",
        ),
    )
    verify_transfer: bool = field(
        default=False,
        metadata=_opt("checksum every request's KV on both sides; a mismatch fails it"),
    )
    auth_key_file: str | None = field(
        default=None,
        metadata=_opt(
            "the remote --receiver's shared secret (default: $GRAPHBATCH_AUTH_KEY); "
            "a receiver started here gets a fresh one"
        ),
    )
    insecure_no_auth: bool = field(
        default=False,
        metadata=_opt("no key: talk to a receiver that runs with --insecure-no-auth too"),
    )
    decode_tokens: int = field(
        default=0,
        metadata=_opt(
            "the decode side continues each request N tokens and sends them back (a "
            "receiver started here decodes with --model; a remote one with its own "
            "--decode-tokens); 0: the KV only"
        ),
    )
    auth_key: bytes | None = field(default=None, repr=False)  # library only: the key itself
    decode_margins: bool = False  # a receiver started here also sends top-2 logprob gaps
    idle_wait_s: float = 0.005  # step() with nothing to compute waits this long on the receiver

    def __post_init__(self) -> None:
        for f in fields(self):
            check = _CHECKS.get(f.name)
            if check is not None:
                problem = check(getattr(self, f.name))
                if problem is not None:
                    raise ConfigError(f.name, f"{problem}, got {getattr(self, f.name)!r}")
        if self.cuda_graph_sizes is not None:
            object.__setattr__(self, "cuda_graph_sizes", tuple(self.cuda_graph_sizes))
        self._check_transfer()

    def _check_transfer(self) -> None:
        if self.transfer == "none":
            for name in ("receiver", "receiver_num_blocks", "auth_key_file", "auth_key"):
                if getattr(self, name) is not None:
                    raise ConfigError(name, "needs transfer='nixl'")
            for name in ("verify_transfer", "insecure_no_auth", "decode_tokens"):
                if getattr(self, name):
                    raise ConfigError(name, "needs transfer='nixl'")
            if self.decode_instances != 1:
                raise ConfigError("decode_instances", "needs transfer='nixl'")
            return
        if self.receiver is not None:
            from graphbatch.transfer.wire import parse_address

            try:
                for address in self.receivers:
                    parse_address(address)
            except ValueError as e:
                raise ConfigError("receiver", str(e)) from None
            if len(set(self.receivers)) != len(self.receivers):
                raise ConfigError("receiver", f"lists an address twice: {self.receiver!r}")
            if self.receiver_num_blocks is not None:
                raise ConfigError("receiver_num_blocks", "is for a receiver started here")
            if self.decode_instances != 1:
                raise ConfigError("decode_instances", "is for receivers started here")
        elif self.auth_key_file is not None:
            raise ConfigError(
                "auth_key_file", "is for a remote receiver (one started here gets a fresh key)"
            )
        if self.receiver is not None and self.auth_key is None:
            from graphbatch.transfer.auth import key_for_cli

            try:  # the file or $GRAPHBATCH_AUTH_KEY, read again when connecting
                key_for_cli(self.auth_key_file, self.insecure_no_auth)
            except ValueError as e:
                raise ConfigError("auth_key_file", str(e)) from None
        if self.auth_key is not None and self.insecure_no_auth:
            raise ConfigError("auth_key", "given with insecure_no_auth")
        if self.auth_key is not None and not isinstance(self.auth_key, bytes):
            raise ConfigError("auth_key", f"must be bytes, got {type(self.auth_key).__name__}")

    @property
    def receivers(self) -> tuple[str, ...]:
        """The decode instances' addresses (``receiver`` split at commas)."""
        if self.receiver is None:
            return ()
        return tuple(a.strip() for a in self.receiver.split(","))

    # ---- what the parts get --------------------------------------------------------
    def limits(self) -> tuple[int, int, int]:
        """(max_num_batched_tokens, max_num_seqs, max_model_len), given or the model's."""
        budget, seqs, max_len = MODEL_LIMITS.get(self.model, CHECKPOINT_LIMITS)
        return (
            budget if self.max_num_batched_tokens is None else self.max_num_batched_tokens,
            seqs if self.max_num_seqs is None else self.max_num_seqs,
            max_len if self.max_model_len is None else self.max_model_len,
        )

    def scheduler_config(self, vocab_size: int) -> SchedulerConfig:
        """The scheduler's config for a model with ``vocab_size`` tokens (ValueError for a
        combination it refuses, e.g. a CUDA graph size above the token budget)."""
        budget, seqs, max_len = self.limits()
        blocks = self.num_kv_blocks
        if blocks is None:
            blocks = seqs * math.ceil(max_len / self.block_size) + 1
        return SchedulerConfig(
            max_num_seqs=seqs,
            max_num_batched_tokens=budget,
            block_size=self.block_size,
            num_kv_blocks=blocks,
            max_model_len=max_len,
            vocab_size=vocab_size,
            token_buckets=self.cuda_graph_sizes,
            seed=self.seed,
            enable_prefix_caching=self.enable_prefix_caching,
            max_num_requests=self.max_num_requests,
            long_prefill_token_threshold=self.long_prefill_token_threshold,
        )


def _int_in(lo: int, hi: int, optional: bool = False):
    def check(v: object) -> str | None:
        if optional and v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            return f"must be an int in [{lo}, {hi}]" + (" or None" if optional else "")
        return None

    return check


def _one_of(choices: tuple[str, ...], optional: bool = False):
    def check(v: object) -> str | None:
        if (optional and v is None) or v in choices:
            return None
        return f"must be one of {list(choices)}" + (" or None" if optional else "")

    return check


def _str(optional: bool):
    def check(v: object) -> str | None:
        if (optional and v is None) or (isinstance(v, str) and v):
            return None
        return "must be a non-empty str" + (" or None" if optional else "")

    return check


def _bool(v: object) -> str | None:
    return None if isinstance(v, bool) else "must be a bool"


def _seconds(hi: float):
    def check(v: object) -> str | None:
        ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        return None if ok and 0 < v <= hi else f"must be seconds in (0, {hi}]"

    return check


def _sizes(v: object) -> str | None:
    if v is None:
        return None
    if not isinstance(v, tuple | list) or not v:
        return "must be a non-empty list of ints > 0 or None"
    if any(isinstance(b, bool) or not isinstance(b, int) or b <= 0 for b in v):
        return "must hold ints > 0"
    return None


_CHECKS = {
    "model": _str(False),
    "backend": _one_of(BACKENDS),
    "device": _str(True),
    "dtype": _one_of(DTYPES, optional=True),
    "seed": _int_in(0, MAX_SEED),
    "max_num_seqs": _int_in(1, 1 << 16, optional=True),
    "max_num_batched_tokens": _int_in(1, 1 << 20, optional=True),
    "max_model_len": _int_in(1, 1 << 24, optional=True),
    "block_size": _int_in(1, 1 << 12),
    "num_kv_blocks": _int_in(2, 1 << 31, optional=True),
    "max_num_requests": _int_in(1, 1 << 24, optional=True),
    "enable_prefix_caching": _bool,
    "long_prefill_token_threshold": _int_in(0, 1 << 24),
    "cuda_graph_sizes": _sizes,
    "enforce_eager": _bool,
    "transfer": _one_of(TRANSFERS),
    "transfer_mode": _one_of(TRANSFER_MODES),
    "receiver": _str(True),
    "receiver_num_blocks": _int_in(2, 1 << 31, optional=True),
    "decode_instances": _int_in(1, 64),
    "transfer_deadline_s": _seconds(3600.0),
    "verify_transfer": _bool,
    "auth_key_file": _str(True),
    "insecure_no_auth": _bool,
    "idle_wait_s": _seconds(1.0),
    "decode_tokens": _int_in(0, 1 << 16),
    "decode_margins": _bool,
}
