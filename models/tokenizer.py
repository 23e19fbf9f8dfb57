"""Tokenizers for real checkpoints (HF folders and GGUF files), id-for-id equal to transformers.

A HF folder is read from its ``tokenizer.json`` as is. A GGUF file has no ``tokenizer.json``: its
vocabulary, merges and special-token ids live in ``tokenizer.ggml.*`` metadata, and we rebuild the
``tokenizers`` pipeline that transformers builds for the same file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as Backend

from .chat_template import render_chat_template

__all__ = ["Tokenizer"]

# The special-token names transformers passes to chat templates when they are set.
_NAMED_SPECIALS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                   "mask_token")  # fmt: skip
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


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not readable JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _token_text(value: Any, where: str) -> str | None:
    """A special token from tokenizer_config.json: a string, or an AddedToken dict."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    raise ValueError(f"{where}: expected a string or an object with 'content', got {value!r}")


def _hf_chat_template(folder: Path, config: Mapping[str, Any]) -> str | None:
    # transformers 5 writes the template to chat_template.jinja; it wins over the config entry.
    jinja_file = folder / "chat_template.jinja"
    if jinja_file.is_file():
        try:
            return jinja_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{jinja_file}: not readable as UTF-8 text ({exc})") from exc
    where = f"{folder / 'tokenizer_config.json'}: field 'chat_template'"
    template = config.get("chat_template")
    if template is None or isinstance(template, str):
        return template
    if isinstance(template, list):  # [{"name": ..., "template": ...}, ...]: HF uses "default"
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, Mapping)}
        if isinstance(named.get("default"), str):
            return named["default"]
        raise ValueError(f"{where}: no template named 'default' among {sorted(map(str, named))}")
    raise ValueError(f"{where}: expected a string or a list, got {type(template).__name__}")


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


def _gguf_backend(meta: Mapping[str, Any]) -> tuple[Backend, dict[str, str]]:
    """The ``tokenizers`` pipeline and the named special tokens of GGUF metadata."""
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
    return backend, named


def _hf_special_tokens(config: Mapping[str, Any], where: Path) -> tuple[dict[str, str], list[str]]:
    """Named and extra special tokens of a tokenizer_config.json."""
    named = {}
    for name in _NAMED_SPECIALS:
        text = _token_text(config.get(name), f"{where}: field {name!r}")
        if text is not None:
            named[name] = text
    extra = config.get("extra_special_tokens") or config.get("additional_special_tokens") or []
    extra = list(extra.values()) if isinstance(extra, Mapping) else extra
    if not isinstance(extra, list):
        raise ValueError(f"{where}: field 'extra_special_tokens' must be a list or an object")
    texts = [_token_text(t, f"{where}: field 'extra_special_tokens'") for t in extra]
    return named, [t for t in texts if t is not None]


def _clean_up_spaces(text: str) -> str:
    """HF's ``clean_up_tokenization``: drop the space WordPiece leaves before punctuation."""
    for before, after in (
        (" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
        (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"),
    ):  # fmt: skip
        text = text.replace(before, after)
    return text


class Tokenizer:
    """Text <-> token ids for one checkpoint, plus its chat template.

    Build it with :meth:`from_hf_dir`, :meth:`from_gguf`, :meth:`from_gguf_reader` or
    :meth:`from_gguf_file`; ids equal those of ``transformers.AutoTokenizer`` for the same files.

    Parameters
    ----------
    backend : tokenizers.Tokenizer
        The full pipeline; its post-processor decides which special tokens ``encode`` adds.
    special_tokens : mapping, optional
        Named special tokens (``bos_token``, ``eos_token``, ...), visible to the chat template.
    chat_template : str, optional
        The Jinja2 chat template.
    clean_up_spaces : bool
        HF's ``clean_up_tokenization_spaces`` for :meth:`decode`; like HF, never for BPE.
    """

    def __init__(
        self,
        backend: Backend,
        special_tokens: Mapping[str, str] | None = None,
        chat_template: str | None = None,
        clean_up_spaces: bool = False,
    ) -> None:
        self._backend = backend
        self._special = dict(special_tokens or {})
        self._chat_template = chat_template
        self._clean_up = clean_up_spaces and not isinstance(backend.model, models.BPE)
        # What the post-processor adds to an empty text, it adds to every text.
        prefix = backend.encode("").ids
        self._add_bos = bool(prefix) and prefix[0] == self.bos_token_id

    @classmethod
    def from_hf_dir(cls, path: str | Path) -> Tokenizer:
        """Load a HF folder: tokenizer.json, tokenizer_config.json, chat_template.jinja.

        As in transformers, ``add_bos_token``/``add_eos_token`` in the config are ignored when
        tokenizer.json exists (it always must here): its post-processor decides.
        """
        folder = Path(path)
        tokenizer_file = folder / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise FileNotFoundError(f"{tokenizer_file}: no tokenizer.json (the only format read)")
        try:
            backend = Backend.from_file(str(tokenizer_file))
        except Exception as exc:  # the Rust side raises a bare Exception
            raise ValueError(f"{tokenizer_file}: not a valid tokenizers file ({exc})") from exc
        config_file = folder / "tokenizer_config.json"
        config = _read_json(config_file) if config_file.is_file() else {}
        named, extra = _hf_special_tokens(config, config_file)
        # transformers registers every special token, adding any the vocabulary lacks.
        added = {t.content for t in backend.get_added_tokens_decoder().values()}
        missing = [t for t in dict.fromkeys([*named.values(), *extra]) if t not in added]
        backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
        clean = bool(config.get("clean_up_tokenization_spaces", False))
        return cls(backend, named, _hf_chat_template(folder, config), clean)

    @classmethod
    def from_gguf(cls, metadata: Mapping[str, Any]) -> Tokenizer:
        """Build the tokenizer of GGUF metadata (key -> plain Python value).

        ``tokenizer.ggml.model`` ``gpt2`` is byte-level BPE; ``llama`` is sentencepiece BPE with
        byte fallback, merges derived from ``tokenizer.ggml.scores`` when the file has none.
        """
        backend, named = _gguf_backend(metadata)
        return cls(backend, named, _gguf_get(metadata, "tokenizer.chat_template"))

    @classmethod
    def from_gguf_reader(cls, reader: Any) -> Tokenizer:
        """Build the tokenizer of a ``gguf.GGUFReader`` (only its tokenizer fields are read)."""
        fields = reader.fields
        keys = [k for k in fields if k.startswith("tokenizer.") or k == "general.architecture"]
        return cls.from_gguf({key: fields[key].contents() for key in keys})

    @classmethod
    def from_gguf_file(cls, path: str | Path) -> Tokenizer:
        """Open a GGUF file and build its tokenizer."""
        from gguf import GGUFReader  # only this constructor needs the gguf package

        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such GGUF file")
        return cls.from_gguf_reader(GGUFReader(str(path)))

    @property
    def backend(self) -> Backend:
        """The underlying ``tokenizers.Tokenizer``."""
        return self._backend

    @property
    def special_tokens(self) -> dict[str, str]:
        """Named special tokens, e.g. ``{"bos_token": "<s>", "eos_token": "</s>"}``."""
        return dict(self._special)

    @property
    def bos_token_id(self) -> int | None:
        """Id of the beginning-of-sequence token, or None."""
        return self._token_id("bos_token")

    @property
    def eos_token_id(self) -> int | None:
        """Id of the end-of-sequence token, or None."""
        return self._token_id("eos_token")

    @property
    def add_bos_token(self) -> bool:
        """Whether :meth:`encode` starts every text with the BOS token."""
        return self._add_bos

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included (HF's ``len(tokenizer)``)."""
        return self._backend.get_vocab_size(with_added_tokens=True)

    @property
    def chat_template(self) -> str | None:
        """The Jinja2 chat template, or None."""
        return self._chat_template

    def _token_id(self, name: str) -> int | None:
        text = self._special.get(name)
        return None if text is None else self._backend.token_to_id(text)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``, with the BOS/EOS the checkpoint adds by default."""
        return self._backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of ``ids``."""
        text = self._backend.decode(list(ids), skip_special_tokens=skip_special_tokens)
        return _clean_up_spaces(text) if self._clean_up else text

    def render_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        **template_kwargs: Any,
    ) -> str:
        """The conversation rendered by the chat template (HF's ``tokenize=False``).

        ``template_kwargs`` become template variables (``tools``, ``enable_thinking``, ...).
        """
        if self._chat_template is None:
            raise ValueError("this tokenizer has no chat template")
        return render_chat_template(
            self._chat_template,
            messages,
            add_generation_prompt=add_generation_prompt,
            special_tokens=self._special,
            **template_kwargs,
        )

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        **template_kwargs: Any,
    ) -> list[int]:
        """Token ids of the rendered conversation; the template writes its own special tokens."""
        text = self.render_chat(messages, add_generation_prompt, **template_kwargs)
        return self.encode(text, add_special_tokens=False)
