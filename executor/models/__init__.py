"""Reference models for the executor."""

from .tiny_decoder import PRESETS, ModelConfig, TinyDecoder, preset

__all__ = ["PRESETS", "ModelConfig", "TinyDecoder", "preset"]
