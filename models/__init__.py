"""Models the executor runs: real checkpoints (Llama, Qwen2, Qwen3 from safetensors or
GGUF, with their tokenizers) and the random-weight presets."""

from .config import ModelConfig, RopeScaling
from .decoder import Decoder
from .loader import load_model, smollm2_path
from .registry import UnsupportedModel
from .tiny import PRESETS, TinyConfig, TinyDecoder, preset
from .tokenizer import Tokenizer

__all__ = [
    "PRESETS",
    "Decoder",
    "ModelConfig",
    "RopeScaling",
    "TinyConfig",
    "TinyDecoder",
    "Tokenizer",
    "UnsupportedModel",
    "load_model",
    "preset",
    "smollm2_path",
]
