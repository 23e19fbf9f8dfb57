"""Embedded default workload: multi-round chat sessions.

Each session opens with a shared system prompt; every later round's prompt is the
previous prompt + the (simulated) reply + a new user turn, so prompts grow round
after round like a real chat served by a prefill instance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .request import Request, SamplingParams


@dataclass(frozen=True)
class ChatWorkload:
    num_sessions: int = 8
    rounds: int = 3
    system_len: int = 48
    user_len: tuple[int, int] = (16, 96)  # uniform range of a new user turn
    reply_len: tuple[int, int] = (8, 48)
    vocab_size: int = 4096
    max_prompt_len: int = 1024
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("num_sessions", "rounds", "system_len", "vocab_size", "max_prompt_len"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"ChatWorkload.{name} must be an int > 0, got {v!r}")


@dataclass(frozen=True)
class Turn:
    session: int
    round: int
    request: Request
    text: str = ""  # the round's user message, for a text workload
    # the conversation the prompt renders (a text workload): a driver that has the
    # decode side's real replies renders it again with them in place of the scripted ones
    messages: tuple[dict, ...] = ()


def sampling_mix(session: int, seed: int = 0) -> SamplingParams:
    """A mix engines see, by session: greedy, nucleus, top-k + nucleus + min-p."""
    kind = session % 3
    if kind == 0:
        return SamplingParams(temperature=0.0)
    if kind == 1:
        return SamplingParams(temperature=0.8, top_p=0.9, seed=(seed << 20) + session)
    return SamplingParams(temperature=1.0, top_p=0.95, top_k=40, min_p=0.05)


def chat_sessions(w: ChatWorkload) -> list[list[Turn]]:
    """Per session, its turns in order; round r+1 may only start after round r."""
    rng = np.random.default_rng(w.seed)
    system = rng.integers(0, w.vocab_size, w.system_len)
    sessions = []
    for s in range(w.num_sessions):
        prompt = system
        turns = []
        sampling = sampling_mix(s, w.seed)
        for r in range(w.rounds):
            user = rng.integers(0, w.vocab_size, int(rng.integers(*w.user_len)))
            prompt = np.concatenate([prompt, user])[-w.max_prompt_len :]
            rid = f"s{s}-r{r}"
            turns.append(Turn(s, r, Request(rid, prompt.tolist(), sampling)))
            reply = rng.integers(0, w.vocab_size, int(rng.integers(*w.reply_len)))
            prompt = np.concatenate([prompt, reply])
        sessions.append(turns)
    return sessions
