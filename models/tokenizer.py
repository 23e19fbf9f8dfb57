"""Tokenizers for real checkpoints (HF folders and GGUF files), id-for-id equal to transformers.

A HF folder is read from its ``tokenizer.json`` as is. A GGUF file has no ``tokenizer.json``: its
vocabulary, merges and special-token ids live in ``tokenizer.ggml.*`` metadata, and
:mod:`.gguf_tokenizer` rebuilds the ``tokenizers`` pipeline that transformers builds for the file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, models
from tokenizers import Tokenizer as Backend

from .chat_template import render_chat_template
from .gguf_tokenizer import gguf_backend

__all__ = ["Tokenizer"]

# The special-token names transformers passes to chat templates when they are set.
_NAMED_SPECIALS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                   "mask_token")  # fmt: skip


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
        return cls(*gguf_backend(metadata))

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
