"""Render Hugging Face chat templates (Jinja2) the way transformers does.

The rendered text is what ``tokenizer.apply_chat_template(..., tokenize=False)`` returns; the
caller then encodes it without adding special tokens, because the template already writes them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

__all__ = ["ChatTemplateError", "compile_chat_template", "render_chat_template"]

# transformers copies a message's reasoning under every one of these names before rendering, so
# a template that reads any of them sees it (gpt-oss reads `thinking`, Qwen `reasoning_content`).
_REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")


class ChatTemplateError(ValueError):
    """A chat template that fails to compile, or that raises while rendering."""


class _GenerationBlock(Extension):
    """Accept ``{% generation %}...{% endgeneration %}`` and render the body unchanged.

    HF uses the tag to mask assistant tokens for training; prefill only needs the text, but a
    template that uses it must still parse.
    """

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> list[nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(f"chat template raised: {message}")


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Jinja's own tojson escapes <, >, & and ' for HTML; HF's does not, and templates rely on it.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=32)
def compile_chat_template(source: str) -> jinja2.Template:
    """Compile a chat template in HF's sandboxed environment.

    Parameters
    ----------
    source : str
        The Jinja2 template text.

    Returns
    -------
    jinja2.Template
        The compiled template (cached by source text).

    Raises
    ------
    ChatTemplateError
        If the template does not parse.
    """
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlock, loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except jinja2.TemplateError as exc:
        raise ChatTemplateError(f"chat template does not compile: {exc}") from exc


def _prepare_message(message: Any, index: int) -> dict[str, Any]:
    if not isinstance(message, Mapping):
        raise TypeError(f"messages[{index}] must be a dict, got {type(message).__name__}")
    # HF drops None values: many templates handle a missing key but print a literal "None".
    prepared = {key: value for key, value in message.items() if value is not None}
    reasoning = next((prepared[k] for k in _REASONING_KEYS if k in prepared), None)
    if reasoning is not None:
        prepared = {"thinking": reasoning, **prepared, "reasoning_content": reasoning}
    return prepared


def render_chat_template(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = True,
    special_tokens: Mapping[str, str] | None = None,
    **variables: Any,
) -> str:
    """Render a conversation with a chat template.

    Parameters
    ----------
    template : str
        The Jinja2 chat template.
    messages : sequence of dict
        The conversation, e.g. ``[{"role": "user", "content": "hi"}]``.
    add_generation_prompt : bool
        Whether the template should open an assistant turn at the end.
    special_tokens : mapping, optional
        Named special tokens (``bos_token``, ``eos_token``, ...) made visible to the template.
    **variables
        Extra template variables (``tools``, ``documents``, ``enable_thinking``, ...); they
        override ``special_tokens`` of the same name, as in HF.

    Returns
    -------
    str
        The rendered prompt text.

    Raises
    ------
    ChatTemplateError
        If the template does not compile, calls ``raise_exception`` or fails while rendering.
    """
    compiled = compile_chat_template(template)
    context: dict[str, Any] = {"tools": None, "documents": None, **(special_tokens or {})}
    context.update(variables)
    context["messages"] = [_prepare_message(message, i) for i, message in enumerate(messages)]
    context["add_generation_prompt"] = add_generation_prompt
    try:
        return compiled.render(context)
    except jinja2.TemplateError as exc:
        raise ChatTemplateError(f"chat template failed while rendering: {exc}") from exc
