"""GGUF tokenizer metadata -> a ``tokenizers.Tokenizer`` pipeline, as transformers builds it.

A GGUF file has no ``tokenizer.json``: its vocabulary, merges and special-token ids live in
``tokenizer.ggml.*`` metadata. :func:`gguf_backend` rebuilds from them the pipeline that
transformers builds for the same file: byte-level BPE for ``gpt2``, sentencepiece BPE for
``llama``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as Backend

__all__ = ["gguf_backend"]

_GGUF_SPECIAL_IDS = {
    "bos_token": "tokenizer.ggml.bos_token_id",
    "eos_token": "tokenizer.ggml.eos_token_id",
    "unk_token": "tokenizer.ggml.unknown_token_id",
    "pad_token": "tokenizer.ggml.padding_token_id",
}
_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types
# Architectures whose sentencepiece files transformers reads with extra, model-specific fixes.
_UNSUPPORTED_SPM_ARCHS = ("gemma", "gemma2", "gemma3")

# Split patterns named by `tokenizer.ggml.pre`. A name not listed keeps GPT-2's own split (this
# is what transformers does; llama.cpp knows more names, e.g. SmolLM's digit split).
_LLAMA3 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SPLIT_PATTERNS = {
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "dbrx", "smaug-bpe"), _LLAMA3),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "megrez"), _QWEN2),
}


def _byte_alphabet() -> dict[int, str]:
    """GPT-2's reversible map from each byte to one printable character."""
    table = {b: chr(b) for b in [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]}
    shifted = (b for b in range(256) if b not in table)
    table.update({b: chr(256 + n) for n, b in enumerate(shifted)})
    return table


_BYTE_CHARS = _byte_alphabet()
_BYTE_ALPHABET = frozenset(_BYTE_CHARS.values())


def _template_processor(bos: str | None, eos: str | None, backend: Backend) -> Any:
    """A post-processor writing ``bos`` before and ``eos`` after the text (either may be None)."""
    # A list of pieces, not one string: a token containing a space must stay one piece.
    single = ([bos] if bos else []) + ["$A"] + ([eos] if eos else [])
    specials = [(t, backend.token_to_id(t)) for t in dict.fromkeys((bos, eos)) if t]
    missing = [t for t, i in specials if i is None]
    if missing:  # e.g. a byte-level BOS spelled outside the byte alphabet
        raise ValueError(
            "GGUF fields 'tokenizer.ggml.bos_token_id'/'eos_token_id': "
            f"{missing} not in the vocabulary"
        )
    return processors.TemplateProcessing(single=single, special_tokens=specials)


def _gguf_get(
    meta: Mapping[str, Any], key: str, default: Any = None, required: bool = False
) -> Any:
    if key not in meta or meta[key] is None:
        if required:
            raise ValueError(f"GGUF metadata has no field {key!r}")
        return default
    return meta[key]


def _gguf_merges(meta: Mapping[str, Any]) -> list[tuple[str, str]] | None:
    merges = _gguf_get(meta, "tokenizer.ggml.merges")
    if merges is None:
        return None
    pairs = [tuple(str(m).split(" ")) for m in merges]
    bad = next((m for m, p in zip(merges, pairs, strict=True) if len(p) != 2), None)
    if bad is not None:
        raise ValueError(f"GGUF field 'tokenizer.ggml.merges': {bad!r} is not 'left right'")
    return pairs


def _merges_from_scores(tokens: Sequence[str], scores: Sequence[float]) -> list[tuple[str, str]]:
    """Merges for a sentencepiece vocabulary: every split of a token into two known tokens.

    Ranked by the merged token's score (best first), then by longer left and right parts; ties keep
    vocabulary order. This is the order transformers derives, so the BPE result matches its.
    """
    rank = {token: i for i, token in enumerate(tokens)}
    found: list[tuple[str, str, float]] = []
    for piece, score in dict(zip(tokens, scores, strict=True)).items():
        splits = [(piece[:k], piece[k:]) for k in range(1, len(piece))]
        splits = [(left, right) for left, right in splits if left in rank and right in rank]
        splits.sort(key=lambda lr: (rank[lr[0]], rank[lr[1]]))
        found.extend((left, right, score) for left, right in splits)
    found.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(left, right) for left, right, _ in found]


def _byte_level_backend(tokens: Sequence[str], meta: Mapping[str, Any]) -> Backend:
    # A token spelled outside the byte alphabet is stored as text; spell its UTF-8 bytes instead.
    vocab = {
        t if set(t) <= _BYTE_ALPHABET else "".join(_BYTE_CHARS[b] for b in t.encode("utf-8")): i
        for i, t in enumerate(tokens)
    }
    model = models.BPE(
        vocab=vocab, merges=_gguf_merges(meta) or [], continuing_subword_prefix="",
        end_of_word_suffix="", fuse_unk=False, dropout=None,
    )  # fmt: skip
    backend = Backend(model)
    pattern = _SPLIT_PATTERNS.get(_gguf_get(meta, "tokenizer.ggml.pre"))
    if pattern is None:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        split = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        backend.pre_tokenizer = pre_tokenizers.Sequence([split, byte_level])
    backend.decoder = decoders.ByteLevel()
    return backend


def _sentencepiece_backend(tokens: Sequence[str], meta: Mapping[str, Any]) -> Backend:
    arch = _gguf_get(meta, "general.architecture", "")
    if arch in _UNSUPPORTED_SPM_ARCHS:
        raise ValueError(
            f"GGUF field 'general.architecture' = {arch!r}: its sentencepiece vocabulary needs "
            "model-specific fixes that are not implemented"
        )
    merges = _gguf_merges(meta)
    if merges is None:  # sentencepiece files carry scores, not merges
        scores = _gguf_get(meta, "tokenizer.ggml.scores", required=True)
        if len(scores) != len(tokens):
            raise ValueError("GGUF field 'tokenizer.ggml.scores' does not match the tokens")
        merges = _merges_from_scores(tokens, [float(s) for s in scores])
    vocab = {t: i for i, t in enumerate(tokens)}
    backend = Backend(models.BPE(vocab=vocab, merges=merges, fuse_unk=True, byte_fallback=True))
    if arch == "phi3":  # Phi-3's prefix space comes from a normalizer, not from Metaspace
        backend.normalizer = normalizers.Sequence(
            [normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")]
        )
    else:
        backend.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=False)
    steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    backend.decoder = decoders.Sequence([*steps, decoders.Strip(" ", 1, 0)])
    return backend


def _add_gguf_tokens(backend: Backend, tokens: Sequence[str], meta: Mapping[str, Any]) -> None:
    """Make control tokens special and user-defined ones whole, as transformers does."""
    types = list(_gguf_get(meta, "tokenizer.ggml.token_type", []))
    if types and len(types) != len(tokens):
        raise ValueError("GGUF field 'tokenizer.ggml.token_type' does not match the tokens")
    # In a byte-level vocabulary a "control" token written outside the byte alphabet is a
    # mislabel; transformers skips it rather than growing the vocabulary.
    byte_level = meta.get("tokenizer.ggml.model") == "gpt2"
    kinds = list(zip(tokens, map(int, types), strict=False))  # lengths checked above
    control = [
        t for t, k in kinds if k == _CONTROL and not (byte_level and set(t) - _BYTE_ALPHABET)
    ]
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    known = backend.get_vocab()
    user = [t for t, k in kinds if k == _USER_DEFINED and t in known]
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in user])


def _gguf_special_tokens(tokens: Sequence[str], meta: Mapping[str, Any]) -> dict[str, str]:
    named = {}
    for name, key in _GGUF_SPECIAL_IDS.items():
        index = _gguf_get(meta, key)
        if index is not None and not 0 <= int(index) < len(tokens):
            raise ValueError(f"GGUF field {key!r} = {index} is outside the {len(tokens)} tokens")
        if index is not None:
            named[name] = tokens[int(index)]
    return named


def gguf_backend(meta: Mapping[str, Any]) -> tuple[Backend, dict[str, str], str | None]:
    """The pipeline, named special tokens and chat template of GGUF metadata.

    ``meta`` maps GGUF keys to plain Python values. Returns ``(backend, special_tokens,
    chat_template)``: the ``tokenizers.Tokenizer`` (its post-processor adds BOS/EOS as the file
    asks), the named special tokens (``bos_token``, ``eos_token``, ...) and the Jinja2 chat
    template or None. Raises ValueError for missing, inconsistent or unsupported metadata.
    """
    tokens = [str(t) for t in _gguf_get(meta, "tokenizer.ggml.tokens", required=True)]
    kind = _gguf_get(meta, "tokenizer.ggml.model", required=True)
    builders = {"gpt2": _byte_level_backend, "llama": _sentencepiece_backend}
    if kind not in builders:
        raise ValueError(
            f"GGUF field 'tokenizer.ggml.model' = {kind!r} is not supported "
            "(supported: 'gpt2' byte-level BPE, 'llama' sentencepiece BPE)"
        )
    try:
        backend = builders[kind](tokens, meta)
    except ValueError:
        raise
    except Exception as exc:  # the Rust BPE rejects a merge naming an unknown token
        raise ValueError(f"GGUF fields 'tokenizer.ggml.tokens'/'merges' disagree: {exc}") from exc
    _add_gguf_tokens(backend, tokens, meta)
    named = _gguf_special_tokens(tokens, meta)
    # transformers' default token classes make these special too. It adds them even when the
    # vocabulary lacks them (a new id past the model's embeddings); we only mark existing ones.
    defaults = ("<|endoftext|>",) if kind == "gpt2" else ("<unk>", "<s>", "</s>")
    vocab = backend.get_vocab()
    added = {t.content for t in backend.get_added_tokens_decoder().values()}
    wanted = [t for t in dict.fromkeys([*defaults, *named.values()]) if t in vocab]
    backend.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in wanted if t not in added]
    )
    # llama.cpp adds BOS to a sentencepiece vocabulary unless the file says otherwise.
    add_bos = bool(_gguf_get(meta, "tokenizer.ggml.add_bos_token", kind == "llama"))
    add_eos = bool(_gguf_get(meta, "tokenizer.ggml.add_eos_token", False))
    bos, eos = named.get("bos_token"), named.get("eos_token")
    backend.post_processor = _template_processor(
        bos if add_bos else None, eos if add_eos else None, backend
    )
    return backend, named, _gguf_get(meta, "tokenizer.chat_template")
