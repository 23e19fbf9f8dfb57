"""Real architectures across the P/D hand-off: a PrefillEngine sends each request's KV to
a receiver process that decodes with the same checkpoint, and the continuation equals
one process's prefill + decode token for token (random Llama-3 / Qwen2 / Qwen3
checkpoints; text chat prompts rendered by the template; a prefix-cache hit and a prompt
chunked over steps among them)."""

from __future__ import annotations

import os

import pytest
from graphbatch.serving import EngineConfig, PrefillEngine, SamplingParams
from graphbatch.serving.verify import verify_decode

from ..executor.helpers import backends
from ..serving.engine_helpers import drain
from .conftest import NEEDS_HF, NEEDS_SMOLLM2

os.environ.setdefault("UCX_NET_DEVICES", "lo")

pytestmark = [NEEDS_HF, NEEDS_SMOLLM2]
GREEDY = SamplingParams(temperature=0.0)
CHAT = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You are a concise assistant for software engineers."},
        {"role": "user", "content": "How do I reverse a list in Python without copying it?"},
    ],
]


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("arch", ["llama3", "qwen2", "qwen3"])
def test_decode_side_continuation_equals_one_process(random_checkpoints, arch, backend):
    cfg = EngineConfig(
        model=random_checkpoints[arch], backend=backend, transfer="nixl", decode_tokens=5,
        decode_margins=True, max_num_batched_tokens=32, max_num_seqs=4, block_size=16,
        max_model_len=256, num_kv_blocks=48,
    )  # fmt: skip
    prompts = {}
    with PrefillEngine(cfg) as e:
        tok = e.tokenizer
        for i, chat in enumerate(CHAT):  # 2nd: > 32 tokens, chunked over steps
            prompts[f"c{i}"] = tok.apply_chat_template(chat, add_generation_prompt=True)
        # round two of the first chat: its prompt starts with round one's (a cache hit)
        follow = [*CHAT[0], {"role": "assistant", "content": "Paris."},
                  {"role": "user", "content": "And its population?"}]  # fmt: skip
        prompts["c0-r1"] = tok.apply_chat_template(follow, add_generation_prompt=True)
        outs = {}
        for rid, ids in prompts.items():  # one by one: the cache holds round one's blocks
            e.add_request(rid, prompt_token_ids=ids, sampling=GREEDY)
            outs.update(drain(e, max_steps=100_000))
    assert len(prompts["c1"]) > 32 and outs["c0-r1"].cached_tokens >= 16
    assert all(o.status == "sent" and o.decoded_token_ids for o in outs.values()), outs
    checked, bad = verify_decode(cfg, list(outs.values()), prompts, dict.fromkeys(prompts, True))
    assert checked == 3 and bad == [], [str(m) for m in bad]


def test_the_chat_driver_carries_the_decode_sides_reply_into_the_next_round(
    random_checkpoints,
):
    from graphbatch.cli.chat_driver import ChatDriver
    from graphbatch.scheduler.chat_text import text_chat_sessions
    from graphbatch.scheduler.workload import ChatWorkload

    cfg = EngineConfig(
        model=random_checkpoints["qwen2"], backend="torch", transfer="nixl", decode_tokens=4,
        max_num_batched_tokens=256, max_num_seqs=4, max_model_len=512, num_kv_blocks=64,
    )  # fmt: skip
    with PrefillEngine(cfg) as e:
        tok = e.tokenizer
        w = ChatWorkload(num_sessions=1, rounds=2, vocab_size=tok.vocab_size, max_prompt_len=512)
        sessions = text_chat_sessions(tok, w)
        scripted = list(sessions[0][1].request.prompt_token_ids)
        stats = ChatDriver(e, sessions, 1).run()
    assert stats.requests == 2 and len(stats.decoded["s0-r0"]) == 4
    reply = tok.decode([stats.first_tokens["s0-r0"], *stats.decoded["s0-r0"]],
                       skip_special_tokens=True).strip()  # fmt: skip
    sent = tok.decode(stats.prompts["s0-r1"])
    assert reply and reply in sent and stats.prompts["s0-r1"] != scripted
    scripted_reply = sessions[0][1].messages[-2]["content"]  # round one's, as written
    assert scripted_reply in tok.decode(scripted) and scripted_reply not in sent
