"""Tests of weights_tools.tokenizer: reference vectors, the SmolLM2 vocabulary, streaming,
file detection and error messages.

The LLaMA 2 tests need the third-party test data (`data_dir`) and the SmolLM2 tests need
the default model (`smollm2`); both skip when absent. The tiktoken and small byte-level
BPE vocabularies are generated here.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weights_tools.errors import TokenizerError
from weights_tools.tokenizer import (
    GGUF_TOKEN_CONTROL,
    GGUF_TOKEN_NORMAL,
    HFTokenizer,
    SentencePieceTokenizer,
    TiktokenTokenizer,
    Tokenizer,
    byte_level_alphabet,
    load_tokenizer,
    tokenizer_from_gguf_metadata,
)

VECTOR_SEPARATOR = "\n__ggml_vocab_test__\n"

# Characters for generated text: ASCII, whitespace runs, accented Latin, Cyrillic, CJK,
# emoji (4-byte UTF-8) and a zero-width joiner, plus other code points. Surrogates and
# control characters are left out, and so is everything above U+3FFFF, because SmolLM2's
# vocabulary has no token for some control bytes and for the lead bytes 0xF1 and up.
# "▁" is left out because SentencePiece decodes it as a space.
TEXT_SAMPLES = list("abcXYZ019 .,'!?\n\t") + ["  ", "é", "ü", "Б", "我", "想", "工", "🦙", "😁", "🚀", "✅", "\u200d"]
text_strategy = st.lists(
    st.one_of(
        st.sampled_from(TEXT_SAMPLES),
        st.characters(max_codepoint=0x3FFFF, exclude_categories=("Cs", "Cc"), exclude_characters="\u2581"),
    ),
    max_size=24,
).map("".join)


def read_vectors(folder: Path) -> list[tuple[str, list[int]]]:
    """Read vectors.inp (texts, each followed by the separator line) and vectors.out (ids per line)."""
    texts = (folder / "vectors.inp").read_text(encoding="utf-8").split(VECTOR_SEPARATOR)
    # The file ends with a separator, so the last split element is not a test string.
    assert texts[-1] == ""
    texts = texts[:-1]
    lines = (folder / "vectors.out").read_text(encoding="utf-8").split("\n")
    assert lines[-1] == ""
    expected = [[int(token) for token in line.split()] for line in lines[:-1]]
    assert len(texts) == len(expected)
    return list(zip(texts, expected))


def stream(tokenizer: Tokenizer, ids: list[int]) -> list[str]:
    """Push ids one by one through a stream decoder; return every push output, then flush's."""
    decoder = tokenizer.stream_decoder()
    outputs = [decoder.push(token_id) for token_id in ids]
    outputs.append(decoder.flush())
    return outputs


def tiktoken_rank_file(path: Path, merges: list[bytes]) -> Path:
    """Write a tiktoken rank file: the 256 single bytes, then `merges` in rank order."""
    tokens = [bytes([byte]) for byte in range(256)] + merges
    lines = [f"{base64.b64encode(token).decode('ascii')} {rank}" for rank, token in enumerate(tokens)]
    path.write_text("\n".join(lines) + "\n", encoding="ascii")
    return path


TIKTOKEN_MERGES = [b"he", b"ll", b"llo", b"hello", b" w", b"or", b"\xe6\x88", b"\xe6\x88\x91", b"12", b"123", b"45", b"12345"]
TIKTOKEN_RANKS = 256 + len(TIKTOKEN_MERGES)

TINY_MERGES = [("h", "e"), ("l", "l"), ("he", "ll"), ("hell", "o"), ("Ġ", "w"), ("o", "r"), ("1", "2"), ("12", "3")]
TINY_CONTROLS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|eot_id|>"]


def tiny_gpt2_metadata(pre: str | None = "gpt2", **extra) -> dict:
    """GGUF key/values of a small byte-level BPE vocabulary: 256 bytes, 8 merges, 4 control tokens."""
    tokens = byte_level_alphabet() + [left + right for left, right in TINY_MERGES] + TINY_CONTROLS
    token_types = [GGUF_TOKEN_NORMAL] * (len(tokens) - len(TINY_CONTROLS)) + [GGUF_TOKEN_CONTROL] * len(TINY_CONTROLS)
    metadata = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": token_types,
        "tokenizer.ggml.merges": [f"{left} {right}" for left, right in TINY_MERGES],
        "tokenizer.ggml.bos_token_id": tokens.index("<|im_start|>"),
        "tokenizer.ggml.eos_token_id": tokens.index("<|endoftext|>"),
    }
    if pre is not None:
        metadata["tokenizer.ggml.pre"] = pre
    metadata.update(extra)
    return metadata


# --- fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama2_folder(data_dir) -> Path:
    folder = data_dir / "llama2_spm"
    if not folder.is_dir():
        pytest.skip(f"LLaMA 2 tokenizer test data not found at {folder}")
    return folder


@pytest.fixture(scope="module")
def spm_file(llama2_folder) -> Tokenizer:
    return load_tokenizer(llama2_folder / "tokenizer.model")


@pytest.fixture(scope="module")
def spm_gguf(llama2_folder) -> Tokenizer:
    return load_tokenizer(llama2_folder / "vocab-only.gguf")


@pytest.fixture(scope="module")
def smollm2_tokenizer(smollm2) -> Tokenizer:
    return tokenizer_from_gguf_metadata(smollm2.metadata, smollm2.path)


@pytest.fixture(scope="module")
def smollm2_json(smollm2_tokenizer, tmp_path_factory) -> Tokenizer:
    """SmolLM2's vocabulary saved as a tokenizer.json, without a tokenizer_config.json."""
    folder = tmp_path_factory.mktemp("smollm2_json")
    smollm2_tokenizer.tokenizer.save(str(folder / "tokenizer.json"))
    return load_tokenizer(folder / "tokenizer.json")


@pytest.fixture(scope="module")
def tiny_tiktoken(tmp_path_factory) -> Tokenizer:
    folder = tmp_path_factory.mktemp("tiktoken")
    return load_tokenizer(tiktoken_rank_file(folder / "tokenizer.model", TIKTOKEN_MERGES))


@pytest.fixture(scope="module")
def tiny_gpt2() -> Tokenizer:
    return tokenizer_from_gguf_metadata(tiny_gpt2_metadata(), "tiny.gguf")


# --- LLaMA 2 SentencePiece reference vectors ------------------------------------------


@pytest.mark.parametrize("backend", ["spm_file", "spm_gguf"])
def test_llama2_vectors_match(backend, llama2_folder, request):
    tokenizer = request.getfixturevalue(backend)
    vectors = read_vectors(llama2_folder)
    assert len(vectors) > 40
    for text, expected in vectors:
        assert tokenizer.encode(text, bos=False) == expected, f"text {text!r}"


@pytest.mark.parametrize("backend", ["spm_file", "spm_gguf"])
def test_llama2_vectors_round_trip(backend, llama2_folder, request):
    tokenizer = request.getfixturevalue(backend)
    for text, _ in read_vectors(llama2_folder):
        assert tokenizer.decode(tokenizer.encode(text)) == text, f"text {text!r}"


def test_llama2_backends_agree(spm_file, spm_gguf):
    assert isinstance(spm_file, SentencePieceTokenizer)
    assert spm_file.kind == "sentencepiece"
    assert spm_gguf.kind == "gguf-llama"
    assert spm_gguf.vocab_size == spm_file.vocab_size == 32000
    assert (spm_gguf.bos_id, spm_gguf.eos_id) == (spm_file.bos_id, spm_file.eos_id) == (1, 2)
    assert spm_gguf.add_bos and spm_file.add_bos
    assert spm_gguf.stop_ids == spm_file.stop_ids == {2}
    pieces_file = [spm_file.id_to_piece(i) for i in range(spm_file.vocab_size)]
    pieces_gguf = [spm_gguf.id_to_piece(i) for i in range(spm_gguf.vocab_size)]
    assert pieces_gguf == pieces_file
    assert spm_gguf.encode("Hello world") == [1, 15043, 3186]


def test_llama2_gguf_space_prefix_off(llama2_folder):
    import gguf

    from weights_tools.gguf_reader import read_metadata

    path = llama2_folder / "vocab-only.gguf"
    metadata = read_metadata(gguf.GGUFReader(path, "r"), path)
    with_prefix = tokenizer_from_gguf_metadata(metadata, path)
    metadata["tokenizer.ggml.add_space_prefix"] = False
    without_prefix = tokenizer_from_gguf_metadata(metadata, path)
    assert with_prefix.encode("Hello", bos=False) == [15043]  # "▁Hello"
    assert without_prefix.encode("Hello", bos=False) == [10994]  # "Hello"
    assert without_prefix.decode([10994]) == "Hello"


def test_sentencepiece_control_text_is_plain(spm_file):
    ids = spm_file.encode("<s>", bos=False)
    assert 1 not in ids
    assert spm_file.decode(ids) == "<s>"


def test_encode_bos_eos_flags(spm_file):
    body = spm_file.encode("Hello", bos=False)
    assert spm_file.encode("Hello") == [1] + body
    assert spm_file.encode("Hello", bos=True, eos=True) == [1] + body + [2]
    assert spm_file.encode("", bos=False) == []


def test_decode_rejects_bad_ids(spm_file):
    with pytest.raises(TokenizerError, match="32000 is out of range"):
        spm_file.decode([1, 32000])
    with pytest.raises(TokenizerError, match="out of range"):
        spm_file.id_to_piece(-1)
    with pytest.raises(TokenizerError, match="not an integer"):
        spm_file.decode(["7"])


# --- SmolLM2 (GGUF gpt2 vocabulary, smollm pre-tokenizer) ---------------------------------


def test_smollm2_encodes_prompt(smollm2_tokenizer):
    assert isinstance(smollm2_tokenizer, HFTokenizer)
    assert smollm2_tokenizer.kind == "gguf-gpt2/smollm"
    assert smollm2_tokenizer.add_bos is False
    assert smollm2_tokenizer.encode("The capital of France is") == [504, 3575, 282, 4649, 314]


def test_smollm2_special_ids(smollm2_tokenizer):
    assert smollm2_tokenizer.vocab_size == 49152
    assert smollm2_tokenizer.bos_id == 1
    assert smollm2_tokenizer.eos_id == 2
    assert smollm2_tokenizer.stop_ids == {0, 2}
    assert smollm2_tokenizer.id_to_piece(2) == "<|im_end|>"
    assert smollm2_tokenizer.token_to_id("<|endoftext|>") == 0


def test_smollm2_parses_control_tokens(smollm2_tokenizer):
    ids = smollm2_tokenizer.encode("<|im_start|>user")
    assert ids[0] == 1
    assert len(ids) == 2
    assert smollm2_tokenizer.decode(ids) == "<|im_start|>user"
    chat = "<|im_start|>user\nHi<|im_end|>\n"
    assert smollm2_tokenizer.encode(chat).count(2) == 1


def test_smollm2_digits_split(smollm2_tokenizer):
    ids = smollm2_tokenizer.encode("Hello world! 123")
    pieces = [smollm2_tokenizer.id_to_piece(i) for i in ids]
    assert pieces[-3:] == ["1", "2", "3"]
    assert pieces[:2] == ["Hello", "Ġworld"]


@pytest.mark.parametrize(
    "text",
    ["The capital of France is", "  multiple   spaces\n\n", "Café déjà vu.", "🦙 我想在apple工作1314151天～", "", "\t"],
)
def test_smollm2_round_trip(smollm2_tokenizer, text):
    assert smollm2_tokenizer.decode(smollm2_tokenizer.encode(text)) == text


def test_smollm2_drops_bytes_without_token(smollm2_tokenizer, caplog):
    # SmolLM2 has no token for byte 0x04 or for 0xF1, the first byte of U+40000.
    for text in ["\x04a", "\U00040000a"]:
        caplog.clear()
        ids = smollm2_tokenizer.encode(text)
        assert smollm2_tokenizer.decode(ids).endswith("a")
        assert "no token for some characters" in caplog.text
    caplog.clear()
    smollm2_tokenizer.encode("plain text 🦙")
    assert caplog.text == ""


def test_tokenizer_json_without_config(smollm2_json):
    assert smollm2_json.bos_id is None
    assert smollm2_json.eos_id is None
    assert smollm2_json.add_bos is False
    assert smollm2_json.stop_ids == {0, 2}  # <|endoftext|> and <|im_end|> are special tokens


def test_tokenizer_json_matches_gguf(smollm2_tokenizer, tmp_path):
    smollm2_tokenizer.tokenizer.save(str(tmp_path / "tokenizer.json"))
    config = {"bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>"}, "add_bos_token": False}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    from_json = load_tokenizer(tmp_path)  # a folder resolves to its tokenizer.json
    assert from_json.kind == "tokenizer.json"
    assert (from_json.bos_id, from_json.eos_id, from_json.add_bos) == (1, 2, False)
    assert from_json.stop_ids == {0, 2}
    for text in ["The capital of France is", "<|im_start|>user\n🦙 123<|im_end|>"]:
        assert from_json.encode(text) == smollm2_tokenizer.encode(text)


# --- small generated vocabularies: tiktoken and GGUF gpt2 -------------------------------


def test_tiktoken_file_detected(tiny_tiktoken):
    assert isinstance(tiny_tiktoken, TiktokenTokenizer)
    n_ranks = TIKTOKEN_RANKS
    assert tiny_tiktoken.vocab_size == n_ranks + 256
    assert tiny_tiktoken.bos_id == n_ranks  # <|begin_of_text|>, 128000 in Llama 3
    assert tiny_tiktoken.eos_id == n_ranks + 1  # <|end_of_text|>
    assert tiny_tiktoken.token_to_id("<|eot_id|>") == n_ranks + 9
    assert tiny_tiktoken.stop_ids == {n_ranks + 1, n_ranks + 8, n_ranks + 9}
    assert tiny_tiktoken.id_to_piece(n_ranks + 255) == "<|reserved_special_token_246|>"
    assert tiny_tiktoken.add_bos


def test_tiktoken_encode_decode(tiny_tiktoken):
    n_ranks = TIKTOKEN_RANKS
    ids = tiny_tiktoken.encode("hello world<|eot_id|>")
    assert ids[0] == n_ranks
    assert [tiny_tiktoken.id_to_piece(i) for i in ids[1:]] == ["hello", "Ġw", "or", "l", "d", "<|eot_id|>"]
    assert tiny_tiktoken.decode(ids) == "<|begin_of_text|>hello world<|eot_id|>"
    assert tiny_tiktoken.decode(tiny_tiktoken.encode("我 🦙", bos=False)) == "我 🦙"
    assert tiny_tiktoken.token_to_id("Ġw") == 256 + 4


def test_tiktoken_splits_digits_by_three(tiny_tiktoken):
    # "12345" is a single rank, but the Llama 3 split pattern cuts digit runs into groups
    # of at most 3 before BPE runs, so it never forms.
    ids = tiny_tiktoken.encode("12345", bos=False)
    assert [tiny_tiktoken.id_to_piece(i) for i in ids] == ["123", "45"]
    assert tiny_tiktoken.token_to_id("12345") is not None


@pytest.mark.parametrize(
    "pre, expected",
    [
        ("gpt2", ["Hello", "Ġ12345", "Ġworld"]),
        ("smollm", ["Hello", "Ġ", "1", "2", "3", "4", "5", "Ġworld"]),
        ("llama-bpe", ["Hello", "Ġ", "123", "45", "Ġworld"]),
    ],
)
def test_gguf_pre_tokenizers(pre, expected):
    tokenizer = tokenizer_from_gguf_metadata(tiny_gpt2_metadata(pre), "tiny.gguf")
    splits = tokenizer.tokenizer.pre_tokenizer.pre_tokenize_str("Hello 12345 world")
    assert [piece for piece, _ in splits] == expected


def test_gguf_unknown_pre_tokenizer():
    with pytest.raises(TokenizerError, match=r"tokenizer\.ggml\.pre = 'qwen9'.*smollm"):
        tokenizer_from_gguf_metadata(tiny_gpt2_metadata("qwen9"), "tiny.gguf")
    with pytest.raises(TokenizerError, match=r"tokenizer\.ggml\.pre = None.*llama-bpe"):
        tokenizer_from_gguf_metadata(tiny_gpt2_metadata(None), "tiny.gguf")


def test_gguf_gpt2_bos_defaults():
    assert tokenizer_from_gguf_metadata(tiny_gpt2_metadata("gpt2"), "tiny.gguf").add_bos is False
    assert tokenizer_from_gguf_metadata(tiny_gpt2_metadata("llama-bpe"), "tiny.gguf").add_bos is True
    explicit = tiny_gpt2_metadata("llama-bpe", **{"tokenizer.ggml.add_bos_token": False})
    assert tokenizer_from_gguf_metadata(explicit, "tiny.gguf").add_bos is False


def test_gguf_gpt2_space_prefix(tiny_gpt2):
    prefixed = tokenizer_from_gguf_metadata(
        tiny_gpt2_metadata(**{"tokenizer.ggml.add_space_prefix": True}), "tiny.gguf"
    )
    assert prefixed.encode("world") == tiny_gpt2.encode(" world")
    assert prefixed.encode("") == []


def test_gguf_gpt2_controls(tiny_gpt2):
    expected_stops = {tiny_gpt2.token_to_id(piece) for piece in ("<|endoftext|>", "<|im_end|>", "<|eot_id|>")}
    assert tiny_gpt2.stop_ids == expected_stops
    ids = tiny_gpt2.encode("<|im_start|>hello")
    assert [tiny_gpt2.id_to_piece(i) for i in ids] == ["<|im_start|>", "hello"]


def test_gguf_repeated_piece(caplog):
    metadata = tiny_gpt2_metadata()
    metadata["tokenizer.ggml.tokens"] = metadata["tokenizer.ggml.tokens"] + ["he"]
    metadata["tokenizer.ggml.token_type"] = metadata["tokenizer.ggml.token_type"] + [GGUF_TOKEN_NORMAL]
    tokenizer = tokenizer_from_gguf_metadata(metadata, "tiny.gguf")
    repeated_id = len(metadata["tokenizer.ggml.tokens"]) - 1
    assert "1 vocabulary pieces are repeated" in caplog.text
    assert tokenizer.vocab_size == repeated_id + 1
    assert tokenizer.token_to_id("he") == 256
    assert tokenizer.decode([repeated_id]) == ""
    with pytest.raises(TokenizerError, match="has no piece"):
        tokenizer.id_to_piece(repeated_id)


def test_gguf_without_tokenizer():
    with pytest.raises(TokenizerError, match="no embedded tokenizer.*--tokenizer"):
        tokenizer_from_gguf_metadata({"general.architecture": "llama"}, "model.gguf")
    with pytest.raises(TokenizerError, match="unsupported tokenizer.ggml.model 'bert'"):
        tokenizer_from_gguf_metadata({"tokenizer.ggml.model": "bert"}, "model.gguf")


def test_gguf_bad_vocabulary():
    bad_merge = tiny_gpt2_metadata()
    bad_merge["tokenizer.ggml.merges"] = ["h e", "he"]
    with pytest.raises(TokenizerError, match=r"merges\[1\]"):
        tokenizer_from_gguf_metadata(bad_merge, "tiny.gguf")
    unknown_piece = tiny_gpt2_metadata()
    unknown_piece["tokenizer.ggml.merges"] = ["x yz"]
    with pytest.raises(TokenizerError, match="cannot build the BPE model"):
        tokenizer_from_gguf_metadata(unknown_piece, "tiny.gguf")
    bad_eos = tiny_gpt2_metadata(**{"tokenizer.ggml.eos_token_id": 10**6})
    with pytest.raises(TokenizerError, match="eos_token_id"):
        tokenizer_from_gguf_metadata(bad_eos, "tiny.gguf")


# --- stream decoder --------------------------------------------------------------------


def test_stream_holds_split_character(smollm2_tokenizer, spm_file):
    smollm_ids = smollm2_tokenizer.encode("🦙!")
    assert len(smollm_ids) > 2
    outputs = stream(smollm2_tokenizer, smollm_ids)
    assert all(output == "" for output in outputs[:-3])
    assert outputs[-3:] == ["🦙", "!", ""]

    spm_ids = spm_file.encode("🦙", bos=False)  # "▁" then four byte-fallback pieces
    assert len(spm_ids) == 5
    assert stream(spm_file, spm_ids) == ["", "", "", "", "🦙", ""]


def test_stream_leading_space(spm_file):
    ids = spm_file.encode("Hello world")
    assert stream(spm_file, ids) == ["", "Hello", " world", ""]


def test_stream_flush_returns_incomplete(tiny_tiktoken):
    # Rank b is the single byte b; 0xE6 alone is the start of a 3-byte character.
    assert stream(tiny_tiktoken, [0xE6]) == ["", "\ufffd"]
    assert stream(tiny_tiktoken, [0xE6, 0x88, 0x91]) == ["", "", "我", ""]


def ids_strategy(tokenizer: Tokenizer, low_ids: int) -> st.SearchStrategy[list[int]]:
    """Random ids, half from the whole vocabulary and half below `low_ids` (byte tokens, controls)."""
    token_id = st.one_of(st.integers(0, tokenizer.vocab_size - 1), st.integers(0, low_ids - 1))
    return st.lists(token_id, max_size=24)


def check_stream_on_ids(tokenizer: Tokenizer, ids: list[int]) -> None:
    assert "".join(stream(tokenizer, ids)) == tokenizer.decode(ids)


def check_stream_on_text(tokenizer: Tokenizer, text: str) -> None:
    ids = tokenizer.encode(text)
    assert "".join(stream(tokenizer, ids)) == tokenizer.decode(ids)
    assert tokenizer.decode(tokenizer.encode(text, bos=False)) == text


@pytest.mark.parametrize("backend", ["spm_file", "spm_gguf", "smollm2_tokenizer", "smollm2_json"])
def test_stream_random_ids(backend, request):
    tokenizer = request.getfixturevalue(backend)

    @given(ids=ids_strategy(tokenizer, 300))
    def check(ids):
        check_stream_on_ids(tokenizer, ids)

    check()


@given(data=st.data())
def test_stream_random_ids_tiny(tiny_tiktoken, tiny_gpt2, data):
    for tokenizer in (tiny_tiktoken, tiny_gpt2):
        check_stream_on_ids(tokenizer, data.draw(ids_strategy(tokenizer, 256)))


@pytest.mark.parametrize("backend", ["spm_file", "spm_gguf", "smollm2_tokenizer", "smollm2_json"])
def test_stream_real_text(backend, request):
    tokenizer = request.getfixturevalue(backend)

    @given(text=text_strategy)
    def check(text):
        check_stream_on_text(tokenizer, text)

    check()


@given(text=text_strategy)
def test_stream_real_text_tiny(tiny_tiktoken, tiny_gpt2, text):
    check_stream_on_text(tiny_tiktoken, text)
    check_stream_on_text(tiny_gpt2, text)


# --- file detection and bad files ------------------------------------------------------


def test_load_missing_file(tmp_path):
    with pytest.raises(TokenizerError, match="not found"):
        load_tokenizer(tmp_path / "nope.model")


def test_load_empty_file(tmp_path):
    (tmp_path / "tokenizer.model").write_bytes(b"")
    with pytest.raises(TokenizerError, match="empty"):
        load_tokenizer(tmp_path / "tokenizer.model")


def test_load_unknown_format(tmp_path):
    path = tmp_path / "image.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(TokenizerError, match="unknown tokenizer format"):
        load_tokenizer(path)


def test_load_folder_without_tokenizer(tmp_path):
    with pytest.raises(TokenizerError, match="has no tokenizer.json or tokenizer.model"):
        load_tokenizer(tmp_path)


@pytest.mark.parametrize("name, cut", [("tokenizer.model", 250_000), ("tokenizer.model", 30), ("vocab-only.gguf", 5000)])
def test_load_truncated_file(llama2_folder, tmp_path, name, cut):
    path = tmp_path / name
    path.write_bytes((llama2_folder / name).read_bytes()[:cut])
    with pytest.raises(TokenizerError, match="truncated"):
        load_tokenizer(path)


def test_load_truncated_json(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text('{"version": "1.0", "model": {"type": "BPE", "vocab": {"a": 0', encoding="utf-8")
    with pytest.raises(TokenizerError, match="not a valid JSON file"):
        load_tokenizer(path)


def test_load_json_not_tokenizer(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text('{"hello": 1}', encoding="utf-8")
    with pytest.raises(TokenizerError, match="not a tokenizer.json"):
        load_tokenizer(path)


def test_load_bad_tiktoken(tmp_path):
    path = tiktoken_rank_file(tmp_path / "tokenizer.model", [b"ab"])
    path.write_bytes(path.read_bytes() + b"YWJj")  # last line cut before its rank
    with pytest.raises(TokenizerError, match="line 258"):
        load_tokenizer(path)

    gap = tmp_path / "gap.model"
    gap.write_text("\n".join(f"{base64.b64encode(bytes([b])).decode()} {b + 1}" for b in range(256)), encoding="ascii")
    with pytest.raises(TokenizerError, match="without gaps"):
        load_tokenizer(gap)

    missing_bytes = tmp_path / "bytes.model"
    missing_bytes.write_text("YQ== 0\nYg== 1\n", encoding="ascii")
    with pytest.raises(TokenizerError, match="lacks 254 of the 256 single-byte tokens"):
        load_tokenizer(missing_bytes)
