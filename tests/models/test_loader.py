"""``load_model`` as a user meets it: GGUF files written the way llama.cpp writes them
(llama, llama3 via ``rope_freqs``, qwen2, qwen3; F32/F16/Q8_0 tensors), HF folders in
their variants (old rope config, sharded, bf16 weights, bf16 compute) and errors that
name the file and the field.

GGUF parity is against transformers holding exactly the weights the file holds (the
dequantized values), so the float32 tolerance applies; the file layout itself is checked
against transformers' own GGUF reader. A llama file whose Q/K rows were not permuted
must fail parity: the loader's un-permute is what makes the round trip work.
"""

from __future__ import annotations

import json
import os
import shutil
import struct

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from graphbatch.executor import GraphExecutor
from graphbatch.models import RopeScaling, UnsupportedModel, load_model
from graphbatch.models.registry import config_from_hf
from graphbatch.scheduler import SchedulerConfig

from .conftest import INIT_RANGE, NEEDS_HF, NEEDS_SMOLLM2
from .gguf_writer import holding, to_gguf, tokenizer_fields, write_gguf
from .test_parity import LOGPROB_TOL, chat_prompts, max_diff, serve

pytestmark = [NEEDS_HF, NEEDS_SMOLLM2]

SAME = ("architecture", "vocab_size", "hidden_size", "num_layers", "num_heads",
        "num_kv_heads", "head_dim", "intermediate_size", "attention_bias", "qk_norm",
        "tie_word_embeddings")  # fmt: skip
BF16_AGREE = 0.75  # bf16 compute: share of prompts whose greedy token equals float32's
BF16_LOGPROB_TOL = 0.15  # ... and |logprob diff| on those (measured: <= 0.13)


def _plain_llama():
    from transformers import LlamaConfig

    return LlamaConfig(architectures=["LlamaForCausalLM"], vocab_size=49152, hidden_size=64,
                       intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, rope_theta=100000.0, rms_norm_eps=1e-5,
                       initializer_range=INIT_RANGE, tie_word_embeddings=False)  # fmt: skip


@pytest.fixture(scope="module")
def sources(random_checkpoints):
    """name -> transformers model (float32) to write as GGUF."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    out = {"llama": AutoModelForCausalLM.from_config(_plain_llama()).eval()}
    for key in ("llama3", "qwen2", "qwen3"):
        path = random_checkpoints[key]
        out[key] = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return out


@pytest.fixture(scope="module")
def tok_fields(smollm2_file):
    return tokenizer_fields(smollm2_file)


def parity(model, hf, key: str) -> float:
    """max |logprob diff| over the chat prompts (asserts the greedy tokens agree)."""
    rounds = chat_prompts(model.tokenizer)
    return max_diff(hf, f"test_loader:{key}", rounds, serve(model, rounds, "torch"))


@pytest.mark.parametrize("key", ["llama", "llama3"])
def test_gguf_files_are_llama_cpp_layout(sources, tmp_path, key):
    """transformers' own GGUF reader gets back the weights each file holds (so the Q/K
    permutation here is llama.cpp's, and un-permuting it is the loader's job)."""
    import torch
    from transformers import AutoModelForCausalLM

    back, _ = to_gguf(tmp_path / "m.gguf", key, sources[key])
    theirs = AutoModelForCausalLM.from_pretrained(
        str(tmp_path), gguf_file="m.gguf", dtype=torch.float32
    )
    for name, p in theirs.named_parameters():
        np.testing.assert_array_equal(p.detach().numpy(), back[name], err_msg=name)


@pytest.mark.parametrize("key", ["llama", "llama3", "qwen2", "qwen3"])
def test_gguf_round_trip_matches_transformers(sources, tok_fields, tmp_path, key):
    hf = sources[key]
    back, kinds = to_gguf(tmp_path / "m.gguf", key, hf, tok_fields)
    assert kinds == {"F32", "F16", "Q8_0"}
    model = load_model(str(tmp_path / "m.gguf"))
    got, want = model.config, config_from_hf(hf.config.to_dict(), "hf")
    assert [getattr(got, f) for f in SAME] == [getattr(want, f) for f in SAME]
    assert got.rope_theta == want.rope_theta and np.float32(want.rms_eps) == got.rms_eps
    assert (model.rope_factors is not None) == (key == "llama3")
    assert parity(model, holding(hf, back), f"gguf-{key}") < LOGPROB_TOL


def test_gguf_llama_without_qk_permutation_fails_parity(sources, tok_fields, tmp_path):
    hf = sources["llama"]
    back, _ = to_gguf(tmp_path / "raw.gguf", "llama", hf, tok_fields, permute=False)
    model = load_model(str(tmp_path / "raw.gguf"))
    with pytest.raises(AssertionError):
        assert parity(model, holding(hf, back), "gguf-llama") < LOGPROB_TOL


# ---- HF folders -------------------------------------------------------------------------
def copy_tokenizer(src: str, dst) -> None:
    for name in os.listdir(src):
        if name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(os.path.join(src, name), dst)


def folder_with(src: str, dst, config: dict | None = None, weights: bool = True) -> str:
    """``dst`` holding ``config`` (default: ``src``'s) and a link to ``src``'s weights."""
    if config is None:
        with open(os.path.join(src, "config.json")) as f:
            config = json.load(f)
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(config, f)
    if weights:
        os.symlink(os.path.join(src, "model.safetensors"), os.path.join(dst, "model.safetensors"))
    return str(dst)


def first_tokens(model) -> list[tuple[int, float]]:
    rounds = chat_prompts(model.tokenizer)
    return [(tok, lp) for tok, lp, _c, _s in serve(model, rounds, "torch")[0]]


@pytest.mark.parametrize("kind_key", ["rope_type", "type"])
def test_old_style_rope_config_loads_like_rope_parameters(random_checkpoints, tmp_path, kind_key):
    src = random_checkpoints["llama3"]
    with open(os.path.join(src, "config.json")) as f:
        raw = json.load(f)
    params = dict(raw.pop("rope_parameters"))
    raw["rope_theta"] = params.pop("rope_theta")
    params[kind_key] = params.pop("rope_type")
    raw["rope_scaling"] = params
    old = load_model(folder_with(src, tmp_path, raw)).config
    new = load_model(src).config
    assert old.rope_scaling == new.rope_scaling == RopeScaling(8.0, 1.0, 4.0, 128)
    assert old == new and new.rope_theta == 500000.0


def test_sharded_checkpoint_serves_like_single_file(random_checkpoints, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    src = random_checkpoints["llama3"]
    hf = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    hf.save_pretrained(tmp_path, max_shard_size="200KB")
    copy_tokenizer(src, tmp_path)
    with open(tmp_path / "model.safetensors.index.json") as f:
        shards = set(json.load(f)["weight_map"].values())
    assert len(shards) >= 3 and not (tmp_path / "model.safetensors").exists()
    assert first_tokens(load_model(str(tmp_path))) == first_tokens(load_model(src))


def test_bf16_checkpoint_matches_transformers_upcast(random_checkpoints, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    src = random_checkpoints["qwen2"]
    AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16).save_pretrained(tmp_path)
    copy_tokenizer(src, tmp_path)
    with open(tmp_path / "model.safetensors", "rb") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"BF16"}
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    model = load_model(str(tmp_path), dtype="float32")
    assert parity(model, hf, "bf16-qwen2") < LOGPROB_TOL


def test_bfloat16_compute_agrees_with_float32(random_checkpoints):
    src = random_checkpoints["qwen3"]
    b16 = load_model(src, dtype="bfloat16")
    assert b16.config.dtype == "bfloat16"
    got, want = first_tokens(b16), first_tokens(load_model(src))
    same = [abs(a[1] - b[1]) for a, b in zip(got, want, strict=True) if a[0] == b[0]]
    assert len(same) >= BF16_AGREE * len(want), (got, want)
    assert 0 < max(same) < BF16_LOGPROB_TOL, same  # > 0: it did compute in bfloat16


# ---- errors name the file and the field ---------------------------------------------------
def raises_naming(exc, call, *parts: str) -> None:
    with pytest.raises(exc) as e:
        call()
    for part in parts:
        assert part in str(e.value), (part, str(e.value))


BAD_CONFIGS = {
    "architecture": ({"architectures": ["MistralForCausalLM"]}, "MistralForCausalLM"),
    "yarn": ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}, "rope type 'yarn'"),
    "gelu": ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
    "missing": ({"hidden_size": ...}, "'hidden_size' is missing"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config_is_refused_by_name(random_checkpoints, tmp_path, case):
    change, words = BAD_CONFIGS[case]
    src = random_checkpoints["llama3"]
    with open(os.path.join(src, "config.json")) as f:
        raw = json.load(f)
    raw.update(change)
    raw = {k: v for k, v in raw.items() if v is not ...}
    exc = ValueError if case == "missing" else UnsupportedModel
    folder = folder_with(src, tmp_path, raw)
    raises_naming(exc, lambda: load_model(folder), os.path.join(folder, "config.json"), words)


def test_folder_without_config_or_weights(random_checkpoints, tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    raises_naming(FileNotFoundError, lambda: load_model(a), os.path.join(a, "config.json"))
    folder_with(random_checkpoints["qwen3"], b, weights=False)
    raises_naming(FileNotFoundError, lambda: load_model(b), b, "no *.safetensors")


def bind(model) -> None:
    cfg = SchedulerConfig(max_num_seqs=2, max_num_batched_tokens=64, block_size=16,
                          num_kv_blocks=8, max_model_len=128,
                          vocab_size=model.config.vocab_size)  # fmt: skip
    GraphExecutor(model, cfg, backend="torch")


@pytest.mark.parametrize("case", ["missing", "shape"])
def test_bad_tensor_is_named_with_shapes(random_checkpoints, tmp_path, case):
    from safetensors.numpy import load_file, save_file

    src = random_checkpoints["qwen3"]
    tensors = load_file(os.path.join(src, "model.safetensors"))
    name = "model.layers.1.self_attn.k_proj.weight"  # (kv heads 2 * head_dim 32, hidden 64)
    if case == "missing":
        del tensors[name]
        words = [f"tensor {name!r} is missing"]
    else:
        tensors[name] = tensors[name][:48]
        words = [name, "(48, 64)", "(64, 64)"]
    folder = folder_with(src, tmp_path, weights=False)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    raises_naming(ValueError, lambda: bind(load_model(folder)), folder, *words)


def _truncated(path):
    with open(path, "rb") as f:
        return f.read(os.path.getsize(path) // 2)


BAD_FILES = {
    "short": (lambda src: b"\x01\x02\x03", "shorter than 8 bytes"),
    "garbage": (lambda src: struct.pack("<Q", 12) + b"not json", "unreadable safetensors header"),
    "huge": (lambda src: struct.pack("<Q", 1 << 40) + b"{}", "header length 1099511627776"),
    "truncated": (lambda src: _truncated(os.path.join(src, "model.safetensors")), "byte range"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_safetensors_file_is_named(random_checkpoints, tmp_path, case):
    make, words = BAD_FILES[case]
    src = random_checkpoints["qwen3"]
    folder = folder_with(src, tmp_path, weights=False)
    (tmp_path / "model.safetensors").write_bytes(make(src))
    path = str(tmp_path / "model.safetensors")
    raises_naming(ValueError, lambda: load_model(folder), path, words)


def test_bad_spec_and_dtype(random_checkpoints, tmp_path):
    (tmp_path / "x.bin").write_bytes(b"\0" * 16)
    raises_naming(ValueError, lambda: load_model(str(tmp_path / "x.bin")), "x.bin", ".gguf")
    raises_naming(FileNotFoundError, lambda: load_model("nope"), "'nope'")
    qwen3 = random_checkpoints["qwen3"]
    raises_naming(ValueError, lambda: load_model(qwen3, dtype="float64"), "dtype", "'float64'")
    (tmp_path / "junk.gguf").write_bytes(b"GGUF" + b"\xff" * 60)
    path = str(tmp_path / "junk.gguf")
    raises_naming(ValueError, lambda: load_model(path), path, "not a readable GGUF file")


TINY_META = {"llama.block_count": 1, "llama.embedding_length": 64,
             "llama.feed_forward_length": 128, "llama.attention.head_count": 4,
             "llama.vocab_size": 256}  # fmt: skip
BAD_GGUF = {
    "gpt2": ("gpt2", {}, ("general.architecture", "'gpt2'")),
    "no block_count": ("llama", {"llama.block_count": ...}, ("'llama.block_count'", "missing")),
    "yarn": ("llama", {"llama.rope.scaling.type": "yarn"}, ("llama.rope.scaling.type", "yarn")),
    "IQ4_NL": ("llama", {}, ("blk.0.attn_q.weight", "IQ4_NL")),
}


@pytest.mark.parametrize("case", list(BAD_GGUF))
def test_bad_gguf_is_refused_by_name(tmp_path, case):
    arch, change, words = BAD_GGUF[case]
    meta = {k: v for k, v in {**TINY_META, **change}.items() if v is not ...}
    state = {"model.layers.0.self_attn.q_proj.weight": np.zeros((64, 64), np.float32)}
    path = str(tmp_path / "bad.gguf")
    iq4 = GGMLQuantizationType.IQ4_NL  # a type the loader does not dequantize
    write_gguf(path, arch, meta if arch == "llama" else {}, state, types=lambda n, w: iq4)
    exc = ValueError if case == "no block_count" else UnsupportedModel
    raises_naming(exc, lambda: load_model(path), path, *words)


@pytest.mark.parametrize("arch", ["qwen2", "llama"])  # qwen2: no vocab_size either
def test_gguf_without_tokenizer_is_refused_by_name(tmp_path, arch):
    meta = {k.replace("llama", arch): v for k, v in TINY_META.items()}
    if arch == "qwen2":
        del meta["qwen2.vocab_size"]
    path = str(tmp_path / "notok.gguf")
    write_gguf(path, arch, meta, {"model.norm.weight": np.ones(64, np.float32)})
    raises_naming(ValueError, lambda: load_model(path), path, "tokenizer.ggml.tokens")
