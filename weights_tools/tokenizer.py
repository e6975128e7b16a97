"""Tokenizers for LLaMA-family models behind one small interface, `Tokenizer`.

Every backend is built on the field's libraries, never on a hand-written BPE:

* a SentencePiece `tokenizer.model` (Llama 1 and 2), through `sentencepiece`;
* a GGUF-embedded `llama` vocabulary, rebuilt as a SentencePiece ModelProto;
* a GGUF-embedded `gpt2` byte-level BPE vocabulary (SmolLM2, Llama 3), through `tokenizers`;
* a Llama 3 `tokenizer.model`, which is a tiktoken rank file, through `tiktoken`;
* a Hugging Face `tokenizer.json`, through `tokenizers`.

`load_tokenizer(path)` picks the backend from the file content, and
`tokenizer_from_gguf_metadata(metadata, path)` builds one from the key/values of an
already opened GGUF checkpoint.

Special tokens written in the text:

* SentencePiece backends encode control pieces such as `<s>` as plain text, because
  SentencePiece never matches control pieces in its input. User-defined pieces are matched.
* The GGUF `gpt2` and `tokenizer.json` backends encode control and user-defined tokens
  (for example `<|im_start|>`) as their single id, as llama.cpp does with parse_special.
* The tiktoken backend encodes every Llama 3 special token as its single id.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import operator
import os
import re
import struct
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weights_tools.errors import CheckpointError, TokenizerError

log = logging.getLogger(__name__)

REPLACEMENT_CHARACTER = "\ufffd"

# End-of-document and end-of-turn pieces of common chat formats (SentencePiece LLaMA,
# GPT-2/SmolLM, ChatML, Llama 3, Gemma, Phi-3). A piece is a stop id only when the
# vocabulary marks it as a control or special token.
END_OF_TURN_PIECES = (
    "</s>",
    "<|endoftext|>",
    "<|im_end|>",
    "<|end_of_text|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<end_of_turn>",
    "<|end|>",
)

# The Llama 3 pre-tokenizer split pattern, as in Meta's llama3 tokenizer.py, the
# pre_tokenizer of Llama 3's tokenizer.json and llama.cpp's LLAMA3 pre-tokenizer type.
LLAMA3_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Llama 3 reserves 256 ids after the BPE ranks for special tokens. The names are those
# of the Llama 3.1 tokenizer.py in Meta's llama-models; the rest are
# <|reserved_special_token_2|> to <|reserved_special_token_246|>. Llama 3.0 called some
# of these ids reserved tokens, but BOS, EOS, the header ids and <|eot_id|> are the same.
LLAMA3_NUM_SPECIAL_TOKENS = 256
LLAMA3_NAMED_SPECIAL_TOKENS = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|step_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
)

# GGUF token types (llama.cpp's llama_token_type). SentencePiece's
# ModelProto.SentencePiece.Type uses the same numbers for the same kinds.
GGUF_TOKEN_NORMAL = 1
GGUF_TOKEN_UNKNOWN = 2
GGUF_TOKEN_CONTROL = 3
GGUF_TOKEN_USER_DEFINED = 4
GGUF_TOKEN_UNUSED = 5
GGUF_TOKEN_BYTE = 6

GGUF_MAGIC = b"GGUF"
TIKTOKEN_LINE = re.compile(rb"^[A-Za-z0-9+/]+={0,2} [0-9]+$")
TOKENIZER_FILE_NAMES = ("tokenizer.json", "tokenizer.model")
FORMATS_HINT = "a .gguf file, a SentencePiece or tiktoken tokenizer.model, or a tokenizer.json"


class Tokenizer(ABC):
    """Convert between text and token ids for one model vocabulary.

    Attributes:
        vocab_size: number of token ids, special tokens included; valid ids are 0..vocab_size-1.
        bos_id: beginning-of-sequence id, or None if the vocabulary has none.
        eos_id: end-of-sequence id, or None if the vocabulary has none.
        add_bos: the model's default for whether `encode` prepends BOS.
        stop_ids: ids that end generation, namely EOS plus the end-of-turn tokens that the
            vocabulary has as special tokens (for example `<|im_end|>` or `<|eot_id|>`).
        kind: short name of the backend, for logs (e.g. "sentencepiece", "gguf-gpt2/smollm").
        source: the file the vocabulary came from, for messages.
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        bos_id: int | None,
        eos_id: int | None,
        add_bos: bool,
        special_pieces: Mapping[str, int],
        extra_stop_ids: Iterable[int] = (),
        kind: str,
        source: str,
    ):
        self.vocab_size = int(vocab_size)
        self.kind = kind
        self.source = source
        self.bos_id = self._optional_id(bos_id, "BOS")
        self.eos_id = self._optional_id(eos_id, "EOS")
        if add_bos and self.bos_id is None:
            raise TokenizerError(
                f"{source}: add_bos_token is true but the vocabulary defines no BOS id; "
                "pass --tokenizer with a complete tokenizer"
            )
        self.add_bos = bool(add_bos)
        stop_ids = {special_pieces[piece] for piece in END_OF_TURN_PIECES if piece in special_pieces}
        stop_ids.update(self._optional_id(token_id, "stop") for token_id in extra_stop_ids)
        if self.eos_id is not None:
            stop_ids.add(self.eos_id)
        self.stop_ids: set[int] = stop_ids

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, source={self.source!r}, vocab_size={self.vocab_size})"

    def encode(self, text: str, bos: bool | None = None, eos: bool = False) -> list[int]:
        """Encode text to token ids, with BOS first if `bos` (None means `add_bos`) and EOS last if `eos`."""
        if not isinstance(text, str):
            raise TokenizerError(f"expected text as str, got {type(text).__name__}")
        ids = self._encode_text(text)
        if self.add_bos if bos is None else bos:
            if self.bos_id is None:
                raise TokenizerError(f"{self.source}: cannot prepend BOS, the vocabulary defines no BOS id")
            ids.insert(0, self.bos_id)
        if eos:
            if self.eos_id is None:
                raise TokenizerError(f"{self.source}: cannot append EOS, the vocabulary defines no EOS id")
            ids.append(self.eos_id)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Decode token ids to text as the backend library does.

        Bytes that do not form valid UTF-8 decode to U+FFFD.
        """
        checked = [self._check_id(token_id) for token_id in ids]
        return self._decode(checked)

    def id_to_piece(self, token_id: int) -> str:
        """Return the raw vocabulary piece of an id (e.g. '▁the', 'Ġthe', '<0x0A>', '<|im_end|>')."""
        return self._id_to_piece(self._check_id(token_id))

    def stream_decoder(self) -> StreamDecoder:
        """Return a decoder that turns ids into text one id at a time, for streaming output."""
        return StreamDecoder(self)

    @abstractmethod
    def token_to_id(self, piece: str) -> int | None:
        """Return the id of a raw vocabulary piece, or None if the vocabulary lacks it."""

    @abstractmethod
    def _encode_text(self, text: str) -> list[int]:
        """Encode text with no BOS or EOS added."""

    @abstractmethod
    def _decode(self, ids: list[int]) -> str:
        """Decode ids that are known to be in range."""

    @abstractmethod
    def _id_to_piece(self, token_id: int) -> str:
        """Return the piece of an id that is known to be in range."""

    def _check_id(self, token_id: Any) -> int:
        try:
            value = operator.index(token_id)
        except TypeError:
            raise TokenizerError(f"token id {token_id!r} is not an integer") from None
        if not 0 <= value < self.vocab_size:
            raise TokenizerError(
                f"token id {value} is out of range for the {self.vocab_size}-token vocabulary of {self.source}"
            )
        return value

    def _optional_id(self, token_id: int | None, role: str) -> int | None:
        if token_id is None:
            return None
        if not 0 <= int(token_id) < self.vocab_size:
            raise TokenizerError(
                f"{self.source}: {role} id {token_id} is out of range for a vocabulary of {self.vocab_size} tokens"
            )
        return int(token_id)


class StreamDecoder:
    """Incremental decoding of generated ids that holds back incomplete UTF-8 characters.

    Each `push` decodes the pending ids with the tokenizer's own `decode` and returns the
    new text, minus any trailing U+FFFD: a multi-byte character split across byte-fallback
    or byte-level tokens decodes to U+FFFD until its last byte arrives. `flush` returns
    what was held back (a genuine U+FFFD or an unfinished character). Call it once, at
    the end of the stream.

    Invariant: the concatenation of every `push` result and `flush` equals
    `tokenizer.decode(all ids)`. Two facts about the backends make this true:

    * decode(ids[:n]) without its trailing U+FFFD is a prefix of decode(ids[:m]) for m > n;
    * once the text so far is non-empty and ends in a complete character, the later ids
      decode the same after any visible anchor piece (here the encoding of "a"). So the
      decoder then drops the ids it has finished with and decodes anchor + pending ids,
      which keeps each push O(pending ids) instead of O(all ids).

    The anchor is what keeps leading spaces right: SentencePiece drops the "▁" of the
    first visible piece only, so until text appears every push decodes from the start.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self._anchor_ids = tokenizer._encode_text("a")
        self._anchor_text = tokenizer.decode(self._anchor_ids)
        # A vocabulary that cannot encode "a" visibly gets no anchor, and every push decodes
        # all ids from the start.
        self._can_anchor = bool(self._anchor_text) and REPLACEMENT_CHARACTER not in self._anchor_text
        self._anchored = False
        self._pending: list[int] = []
        self._emitted = 0  # characters of the pending text already returned

    def push(self, token_id: int) -> str:
        """Append one id and return the text it completes (possibly empty)."""
        self._pending.append(self.tokenizer._check_id(token_id))
        text = self._pending_text()
        complete = len(text.rstrip(REPLACEMENT_CHARACTER))
        new_text = text[self._emitted : complete] if complete > self._emitted else ""
        self._emitted = max(self._emitted, complete)
        if self._can_anchor and complete == len(text) and (text or self._anchored):
            self._anchored = True
            self._pending = []
            self._emitted = 0
        return new_text

    def flush(self) -> str:
        """Return all text not yet returned, including held-back U+FFFD characters."""
        text = self._pending_text()
        new_text = text[self._emitted :]
        self._emitted = len(text)
        return new_text

    def _pending_text(self) -> str:
        if not self._anchored:
            return self.tokenizer.decode(self._pending)
        text = self.tokenizer.decode(self._anchor_ids + self._pending)
        if not text.startswith(self._anchor_text):
            raise TokenizerError(
                f"{self.tokenizer.source}: streaming decode failed: the decoder changed the anchor text "
                f"{self._anchor_text!r} to {text[: len(self._anchor_text)]!r}; decode the whole sequence instead"
            )
        return text[len(self._anchor_text) :]


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model: a `tokenizer.model` file or a GGUF `llama` vocabulary.

    A `tokenizer.model` file does not record whether to prepend BOS, so `add_bos` defaults
    to True, the LLaMA 1 and 2 convention that llama.cpp also uses for SentencePiece.
    """

    def __init__(
        self,
        processor: Any,
        *,
        source: str,
        kind: str = "sentencepiece",
        add_bos: bool = True,
        bos_id: int | None = None,
        eos_id: int | None = None,
        extra_stop_ids: Iterable[int] = (),
    ):
        self.processor = processor
        vocab_size = processor.get_piece_size()
        controls = {processor.id_to_piece(i): i for i in range(vocab_size) if processor.is_control(i)}
        super().__init__(
            vocab_size=vocab_size,
            bos_id=bos_id if bos_id is not None else _sentencepiece_id(processor.bos_id()),
            eos_id=eos_id if eos_id is not None else _sentencepiece_id(processor.eos_id()),
            add_bos=add_bos,
            special_pieces=controls,
            extra_stop_ids=extra_stop_ids,
            kind=kind,
            source=source,
        )

    def token_to_id(self, piece: str) -> int | None:
        token_id = self.processor.piece_to_id(piece)
        return token_id if self.processor.id_to_piece(token_id) == piece else None

    def _encode_text(self, text: str) -> list[int]:
        return list(self.processor.encode(text, out_type=int))

    def _decode(self, ids: list[int]) -> str:
        return self.processor.decode(ids)

    def _id_to_piece(self, token_id: int) -> str:
        return self.processor.id_to_piece(token_id)


class HFTokenizer(Tokenizer):
    """A `tokenizers.Tokenizer`: a tokenizer.json file or a GGUF `gpt2` vocabulary.

    Added tokens (special or not) written in the text encode as their single id, because
    `tokenizers` matches them before the model runs. `decode` keeps special tokens.
    With `add_space_prefix`, encode prepends one space to non-empty text, as llama.cpp's
    add_space_prefix key requests, and decode keeps that space, like Hugging Face's ByteLevel
    decoder with add_prefix_space.

    A byte-level vocabulary may lack some single-byte tokens (SmolLM2 has no token for
    the bytes 0x04, 0xF1 and 19 others), so characters that contain such a byte are
    dropped, as Hugging Face and llama.cpp drop them. With `warn_if_lossy`, encode logs
    a warning when that happens.
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        source: str,
        kind: str,
        bos_id: int | None,
        eos_id: int | None,
        add_bos: bool,
        add_space_prefix: bool = False,
        warn_if_lossy: bool = False,
        extra_stop_ids: Iterable[int] = (),
        vocab_size: int | None = None,
    ):
        self.tokenizer = tokenizer
        self.add_space_prefix = add_space_prefix
        self.warn_if_lossy = warn_if_lossy
        specials = {
            added.content: token_id
            for token_id, added in tokenizer.get_added_tokens_decoder().items()
            if added.special
        }
        if vocab_size is None:
            # The largest id plus one, because a tokenizer.json vocabulary may skip ids.
            vocab_size = max(tokenizer.get_vocab(with_added_tokens=True).values(), default=-1) + 1
        super().__init__(
            vocab_size=vocab_size,
            bos_id=bos_id,
            eos_id=eos_id,
            add_bos=add_bos,
            special_pieces=specials,
            extra_stop_ids=extra_stop_ids,
            kind=kind,
            source=source,
        )

    def token_to_id(self, piece: str) -> int | None:
        return self.tokenizer.token_to_id(piece)

    def _encode_text(self, text: str) -> list[int]:
        if self.add_space_prefix and text:
            text = " " + text
        ids = list(self.tokenizer.encode(text, add_special_tokens=False).ids)
        if self.warn_if_lossy and self._decode(ids) != text:
            log.warning("%s: the vocabulary has no token for some characters of the text; they were dropped", self.source)
        return ids

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def _id_to_piece(self, token_id: int) -> str:
        piece = self.tokenizer.id_to_token(token_id)
        if piece is None:
            raise TokenizerError(f"token id {token_id} has no piece in {self.source}")
        return piece


class TiktokenTokenizer(Tokenizer):
    """A Llama 3 `tokenizer.model`: tiktoken BPE ranks plus 256 special tokens.

    Pieces are shown in the GPT-2 byte-to-unicode alphabet (e.g. 'Ġthe'), the form Llama 3's
    tokenizer.json and GGUF vocabularies use, so `--pieces` output matches across formats.
    """

    def __init__(self, encoding: Any, *, source: str, special_tokens: Mapping[str, int]):
        self.encoding = encoding
        self.special_tokens = dict(special_tokens)
        self._special_names = {token_id: name for name, token_id in special_tokens.items()}
        self._byte_alphabet = byte_level_alphabet()
        self._byte_values = {char: byte for byte, char in enumerate(self._byte_alphabet)}
        super().__init__(
            vocab_size=encoding.n_vocab,
            bos_id=special_tokens["<|begin_of_text|>"],
            eos_id=special_tokens["<|end_of_text|>"],
            add_bos=True,
            special_pieces=special_tokens,
            kind="tiktoken",
            source=source,
        )

    def token_to_id(self, piece: str) -> int | None:
        if piece in self.special_tokens:
            return self.special_tokens[piece]
        if any(char not in self._byte_values for char in piece):
            return None
        try:
            return self.encoding.encode_single_token(bytes(self._byte_values[char] for char in piece))
        except KeyError:
            return None

    def _encode_text(self, text: str) -> list[int]:
        return list(self.encoding.encode(text, allowed_special="all"))

    def _decode(self, ids: list[int]) -> str:
        return self.encoding.decode(ids, errors="replace")

    def _id_to_piece(self, token_id: int) -> str:
        if token_id in self._special_names:
            return self._special_names[token_id]
        return "".join(self._byte_alphabet[byte] for byte in self.encoding.decode_single_token_bytes(token_id))


def byte_level_alphabet() -> list[str]:
    """Return GPT-2's byte-to-unicode table: entry b is the printable character for byte b.

    Printable Latin-1 bytes map to themselves. The other 68 bytes (controls, space,
    DEL and a few Latin-1 ones) map, in byte order, to U+0100 and up, so space becomes 'Ġ'.
    """
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    alphabet = []
    next_code_point = 0x100
    for byte in range(256):
        if byte in printable:
            alphabet.append(chr(byte))
        else:
            alphabet.append(chr(next_code_point))
            next_code_point += 1
    return alphabet


def _sentencepiece_id(token_id: int) -> int | None:
    return token_id if token_id >= 0 else None


# --- loading by file content ---------------------------------------------------------


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load a tokenizer, choosing the backend from the file content.

    Accepts a GGUF file (its embedded vocabulary), a SentencePiece `tokenizer.model`, a
    Llama 3 tiktoken `tokenizer.model`, a Hugging Face `tokenizer.json`, or a folder that
    contains tokenizer.json or tokenizer.model. Raises TokenizerError for anything else.
    """
    path = Path(path)
    if path.is_dir():
        path = _tokenizer_file_in(path)
    if not path.exists():
        raise TokenizerError(f"{path}: tokenizer file not found; pass {FORMATS_HINT}")
    if not path.is_file():
        raise TokenizerError(f"{path}: not a regular file; pass {FORMATS_HINT}")

    with path.open("rb") as handle:
        magic = handle.read(len(GGUF_MAGIC))
    if magic == GGUF_MAGIC:
        return _load_gguf_file(path)

    data = path.read_bytes()
    if not data:
        raise TokenizerError(f"{path}: the file is empty; pass {FORMATS_HINT}")
    if data.lstrip()[:1] == b"{":
        return _load_tokenizer_json(path, data)
    if TIKTOKEN_LINE.match(data.split(b"\n", 1)[0].rstrip(b"\r")):
        return _load_tiktoken(path, data)
    # A serialized ModelProto starts with field 1 (`pieces`, length-delimited): tag 0x0A.
    if data[:1] == b"\x0a":
        return _load_sentencepiece(path, data)
    raise TokenizerError(f"{path}: unknown tokenizer format (first bytes {data[:8]!r}); pass {FORMATS_HINT}")


def _tokenizer_file_in(folder: Path) -> Path:
    for name in TOKENIZER_FILE_NAMES:
        candidate = folder / name
        if candidate.is_file():
            return candidate
    raise TokenizerError(f"{folder}: the folder has no {' or '.join(TOKENIZER_FILE_NAMES)}; pass {FORMATS_HINT}")


def _load_gguf_file(path: Path) -> Tokenizer:
    import gguf

    from weights_tools.gguf_reader import read_metadata

    try:
        reader = gguf.GGUFReader(path, "r")
        metadata = read_metadata(reader, path)
    except CheckpointError as exc:
        raise TokenizerError(str(exc)) from None
    except (ValueError, IndexError, KeyError, OSError, struct.error, UnicodeDecodeError, OverflowError) as exc:
        raise TokenizerError(
            f"{path}: cannot parse GGUF file, it is truncated or malformed ({type(exc).__name__}: {exc})"
        ) from None
    return tokenizer_from_gguf_metadata(metadata, path)


def _load_sentencepiece(path: Path, data: bytes) -> SentencePieceTokenizer:
    import sentencepiece
    from google.protobuf.message import DecodeError
    from sentencepiece import sentencepiece_model_pb2 as model_pb2

    proto = model_pb2.ModelProto()
    try:
        proto.ParseFromString(data)
    except DecodeError as exc:
        raise TokenizerError(f"{path}: not a valid SentencePiece model, it is truncated or corrupt ({exc})") from None
    # The specs follow the pieces in the file, so a file cut short at a piece boundary
    # still parses but lacks them.
    if not proto.pieces or not proto.HasField("trainer_spec") or not proto.HasField("normalizer_spec"):
        raise TokenizerError(f"{path}: SentencePiece model is truncated: the trainer or normalizer spec is missing")
    try:
        processor = sentencepiece.SentencePieceProcessor(model_proto=data)
    except (RuntimeError, OSError) as exc:
        raise TokenizerError(f"{path}: SentencePiece cannot load the model: {exc}") from None
    return SentencePieceTokenizer(processor, source=os.fspath(path))


def _load_tiktoken(path: Path, data: bytes) -> TiktokenTokenizer:
    """Load a Llama 3 tiktoken rank file: one '<base64 token> <rank>' line per BPE token.

    NOTE: every tiktoken rank file is taken to be Llama 3's, with its split pattern and
    its 256 special tokens after the ranks. Other tiktoken vocabularies are not detected.
    """
    import tiktoken

    ranks = parse_tiktoken_ranks(data, path)
    special_tokens = llama3_special_tokens(len(ranks))
    try:
        encoding = tiktoken.Encoding(
            name=path.stem,
            pat_str=LLAMA3_SPLIT_PATTERN,
            mergeable_ranks=ranks,
            special_tokens=special_tokens,
            explicit_n_vocab=len(ranks) + len(special_tokens),
        )
    except (ValueError, AssertionError) as exc:
        raise TokenizerError(f"{path}: tiktoken cannot build the encoding: {exc}") from None
    return TiktokenTokenizer(encoding, source=os.fspath(path), special_tokens=special_tokens)


def parse_tiktoken_ranks(data: bytes, path: Path) -> dict[bytes, int]:
    """Parse a tiktoken rank file into {token bytes: rank}, checking ranks are 0..n-1."""
    ranks: dict[bytes, int] = {}
    for line_number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        if not TIKTOKEN_LINE.match(line):
            raise TokenizerError(
                f"{path}: line {line_number} is not '<base64 token> <rank>'; the tiktoken file is corrupt or truncated"
            )
        encoded, rank = line.split(b" ")
        try:
            token = base64.b64decode(encoded, validate=True)
        except binascii.Error as exc:
            raise TokenizerError(f"{path}: line {line_number} has invalid base64 ({exc})") from None
        if token in ranks:
            raise TokenizerError(f"{path}: line {line_number} repeats a token already given rank {ranks[token]}")
        ranks[token] = int(rank)
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise TokenizerError(f"{path}: tiktoken ranks are not 0..{len(ranks) - 1} without gaps; the file is corrupt")
    missing = [byte for byte in range(256) if bytes([byte]) not in ranks]
    if missing:
        raise TokenizerError(
            f"{path}: tiktoken file lacks {len(missing)} of the 256 single-byte tokens (first: {missing[0]:#04x})"
        )
    return ranks


def llama3_special_tokens(first_id: int) -> dict[str, int]:
    """Return Llama 3's 256 special tokens, numbered from first_id (128000 in Llama 3)."""
    names = list(LLAMA3_NAMED_SPECIAL_TOKENS)
    reserved_count = LLAMA3_NUM_SPECIAL_TOKENS - len(names)
    names.extend(f"<|reserved_special_token_{2 + i}|>" for i in range(reserved_count))
    return {name: first_id + i for i, name in enumerate(names)}


def _load_tokenizer_json(path: Path, data: bytes) -> HFTokenizer:
    """Load a Hugging Face tokenizer.json, with BOS/EOS from a sibling tokenizer_config.json.

    Without `add_bos_token` in the config, `add_bos` is whether the file's post-processor
    prepends BOS. `eos_token_id` of a sibling generation_config.json adds stop ids.
    """
    import tokenizers

    try:
        json.loads(data)
        tokenizer = tokenizers.Tokenizer.from_str(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise TokenizerError(f"{path}: not a valid JSON file, it is truncated or corrupt ({exc})") from None
    # tokenizers reports schema errors as a bare Exception.
    except Exception as exc:  # noqa: BLE001
        raise TokenizerError(f"{path}: not a tokenizer.json that `tokenizers` can load ({exc})") from None
    # Some tokenizer.json files set truncation or padding for training; a prompt needs neither.
    tokenizer.no_truncation()
    tokenizer.no_padding()

    config = _read_sibling_json(path, "tokenizer_config.json")
    bos_id = _config_token_id(tokenizer, config.get("bos_token"), path, "bos_token")
    eos_id = _config_token_id(tokenizer, config.get("eos_token"), path, "eos_token")
    add_bos = config.get("add_bos_token")
    if not isinstance(add_bos, bool):
        add_bos = bos_id is not None and tokenizer.encode("a", add_special_tokens=True).ids[:1] == [bos_id]

    generation_config = _read_sibling_json(path, "generation_config.json")
    stop_ids = generation_config.get("eos_token_id", [])
    stop_ids = [stop_ids] if isinstance(stop_ids, int) else stop_ids
    stop_ids = [token_id for token_id in stop_ids if isinstance(token_id, int) and token_id >= 0]
    return HFTokenizer(
        tokenizer,
        source=os.fspath(path),
        kind="tokenizer.json",
        bos_id=bos_id,
        eos_id=eos_id,
        add_bos=add_bos,
        extra_stop_ids=stop_ids,
    )


def _read_sibling_json(path: Path, name: str) -> dict[str, Any]:
    sibling = path.with_name(name)
    if not sibling.is_file():
        return {}
    try:
        content = json.loads(sibling.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise TokenizerError(f"{sibling}: invalid JSON ({exc}); fix or remove the file") from None
    return content if isinstance(content, dict) else {}


def _config_token_id(tokenizer: Any, token: Any, path: Path, field: str) -> int | None:
    # tokenizer_config.json gives a token as a string or as an AddedToken dict with "content".
    if isinstance(token, dict):
        token = token.get("content")
    if not isinstance(token, str):
        return None
    token_id = tokenizer.token_to_id(token)
    if token_id is None:
        raise TokenizerError(f"{path.with_name('tokenizer_config.json')}: {field} {token!r} is not in the vocabulary")
    return token_id


# --- GGUF-embedded vocabularies ------------------------------------------------------


def tokenizer_from_gguf_metadata(metadata: Mapping[str, Any], path: str | os.PathLike | None) -> Tokenizer:
    """Build the tokenizer embedded in a GGUF file from its key/values (`Checkpoint.metadata`).

    Supports `tokenizer.ggml.model` = "llama" (SentencePiece) and "gpt2" (byte-level BPE).
    """
    source = os.fspath(path) if path is not None else "<gguf>"
    model = metadata.get("tokenizer.ggml.model")
    if model is None or model in ("no", "none"):
        raise TokenizerError(
            f"{source}: the GGUF file has no embedded tokenizer (tokenizer.ggml.model is {model!r}); "
            "pass --tokenizer with a tokenizer.model or tokenizer.json"
        )
    if model == "llama":
        return _sentencepiece_from_gguf(metadata, source)
    if model == "gpt2":
        return _byte_level_bpe_from_gguf(metadata, source)
    raise TokenizerError(
        f"{source}: unsupported tokenizer.ggml.model {model!r}; supported: 'llama' (SentencePiece) and "
        "'gpt2' (byte-level BPE); pass --tokenizer with a tokenizer.model or tokenizer.json"
    )


def _gguf_array(
    metadata: Mapping[str, Any], key: str, source: str, item_type: type, length: int | None = None
) -> list[Any]:
    if key not in metadata:
        raise TokenizerError(f"{source}: GGUF tokenizer key {key} is missing; pass --tokenizer with the model's tokenizer")
    values = metadata[key]
    if not isinstance(values, (list, tuple)):
        raise TokenizerError(f"{source}: GGUF key {key} should be an array, got {type(values).__name__}")
    if length is not None and len(values) != length:
        raise TokenizerError(f"{source}: GGUF key {key} has {len(values)} entries, expected {length} (one per token)")
    accepted = (int, float) if item_type is float else (item_type,)
    for index, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, accepted):
            raise TokenizerError(
                f"{source}: GGUF key {key}[{index}] should be {item_type.__name__}, got {type(value).__name__}"
            )
    return list(values)


def _gguf_token_id(metadata: Mapping[str, Any], key: str, source: str, n_tokens: int) -> int | None:
    if key not in metadata:
        return None
    value = metadata[key]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < n_tokens:
        raise TokenizerError(f"{source}: GGUF key {key} = {value!r} is not a token id below {n_tokens}")
    return value


def _gguf_bool(metadata: Mapping[str, Any], key: str, source: str, default: bool) -> bool:
    value = metadata.get(key, default)
    if not isinstance(value, bool):
        raise TokenizerError(f"{source}: GGUF key {key} should be a bool, got {value!r}")
    return value


def _gguf_extra_stop_ids(metadata: Mapping[str, Any], source: str, n_tokens: int) -> list[int]:
    keys = ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id")
    ids = [_gguf_token_id(metadata, key, source, n_tokens) for key in keys]
    return [token_id for token_id in ids if token_id is not None]


def _sentencepiece_from_gguf(metadata: Mapping[str, Any], source: str) -> SentencePieceTokenizer:
    """Rebuild a GGUF `llama` vocabulary as a SentencePiece BPE model with byte fallback."""
    import sentencepiece

    proto = sentencepiece_proto_from_gguf(metadata, source)
    try:
        processor = sentencepiece.SentencePieceProcessor(model_proto=proto.SerializeToString())
    except (RuntimeError, OSError) as exc:
        raise TokenizerError(f"{source}: SentencePiece rejects the GGUF vocabulary: {exc}") from None
    n_tokens = len(proto.pieces)
    return SentencePieceTokenizer(
        processor,
        source=source,
        kind="gguf-llama",
        add_bos=_gguf_bool(metadata, "tokenizer.ggml.add_bos_token", source, True),
        bos_id=_gguf_token_id(metadata, "tokenizer.ggml.bos_token_id", source, n_tokens),
        eos_id=_gguf_token_id(metadata, "tokenizer.ggml.eos_token_id", source, n_tokens),
        extra_stop_ids=_gguf_extra_stop_ids(metadata, source, n_tokens),
    )


def sentencepiece_proto_from_gguf(metadata: Mapping[str, Any], source: str) -> Any:
    """Return a SentencePiece ModelProto for a GGUF `llama` vocabulary.

    The settings are those of Meta's LLaMA tokenizer.model: BPE with byte fallback,
    identity normalization, whitespace escaped to "▁", no whitespace removal, and a dummy
    "▁" prefix when `tokenizer.ggml.add_space_prefix` is true (the default for `llama`).
    """
    from sentencepiece import sentencepiece_model_pb2 as model_pb2

    tokens = _gguf_array(metadata, "tokenizer.ggml.tokens", source, str)
    scores = _gguf_array(metadata, "tokenizer.ggml.scores", source, float, len(tokens))
    token_types = _gguf_array(metadata, "tokenizer.ggml.token_type", source, int, len(tokens))
    piece_types = {
        GGUF_TOKEN_NORMAL: model_pb2.ModelProto.SentencePiece.NORMAL,
        GGUF_TOKEN_UNKNOWN: model_pb2.ModelProto.SentencePiece.UNKNOWN,
        GGUF_TOKEN_CONTROL: model_pb2.ModelProto.SentencePiece.CONTROL,
        GGUF_TOKEN_USER_DEFINED: model_pb2.ModelProto.SentencePiece.USER_DEFINED,
        GGUF_TOKEN_UNUSED: model_pb2.ModelProto.SentencePiece.UNUSED,
        GGUF_TOKEN_BYTE: model_pb2.ModelProto.SentencePiece.BYTE,
    }

    proto = model_pb2.ModelProto()
    for token_id, (piece, score, token_type) in enumerate(zip(tokens, scores, token_types)):
        if token_type not in piece_types:
            raise TokenizerError(
                f"{source}: token {token_id} ({piece!r}) has GGUF token type {token_type}, "
                f"expected one of {sorted(piece_types)}"
            )
        entry = proto.pieces.add()
        entry.piece = piece
        entry.score = float(score)
        entry.type = piece_types[token_type]

    n_tokens = len(tokens)
    unk_id = _gguf_token_id(metadata, "tokenizer.ggml.unknown_token_id", source, n_tokens)
    if unk_id is None:
        unknown = [i for i, token_type in enumerate(token_types) if token_type == GGUF_TOKEN_UNKNOWN]
        if not unknown:
            raise TokenizerError(f"{source}: the GGUF `llama` vocabulary has no unknown token, which SentencePiece requires")
        unk_id = unknown[0]

    trainer = proto.trainer_spec
    trainer.model_type = model_pb2.TrainerSpec.BPE
    trainer.vocab_size = n_tokens
    trainer.byte_fallback = GGUF_TOKEN_BYTE in token_types
    trainer.unk_id = unk_id
    trainer.unk_piece = tokens[unk_id]
    for role in ("bos", "eos", "pad"):
        token_id = _gguf_token_id(metadata, f"tokenizer.ggml.{role}_token_id", source, n_tokens)
        setattr(trainer, f"{role}_id", -1 if token_id is None else token_id)
        if token_id is not None:
            setattr(trainer, f"{role}_piece", tokens[token_id])

    normalizer = proto.normalizer_spec
    normalizer.name = "identity"
    normalizer.add_dummy_prefix = _gguf_bool(metadata, "tokenizer.ggml.add_space_prefix", source, True)
    normalizer.remove_extra_whitespaces = _gguf_bool(metadata, "tokenizer.ggml.remove_extra_whitespaces", source, False)
    normalizer.escape_whitespaces = True
    return proto


@dataclass(frozen=True)
class PreTokenizerSpec:
    """The `tokenizers` settings for one GGUF `tokenizer.ggml.pre` value.

    `ignore_merges` and `add_bos` are llama.cpp's defaults for that value.
    """

    build: Callable[[], Any]
    ignore_merges: bool = False
    add_bos: bool = False


def _gpt2_pre_tokenizer() -> Any:
    from tokenizers import pre_tokenizers

    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def _smollm_pre_tokenizer() -> Any:
    # As SmolLM2's tokenizer.json: every digit on its own, then GPT-2's split regex.
    from tokenizers import pre_tokenizers

    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )


def _llama3_pre_tokenizer() -> Any:
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


GGUF_PRE_TOKENIZERS: dict[str, PreTokenizerSpec] = {
    "gpt2": PreTokenizerSpec(_gpt2_pre_tokenizer),
    "gpt-2": PreTokenizerSpec(_gpt2_pre_tokenizer),
    "smollm": PreTokenizerSpec(_smollm_pre_tokenizer),
    "llama-bpe": PreTokenizerSpec(_llama3_pre_tokenizer, ignore_merges=True, add_bos=True),
    "llama3": PreTokenizerSpec(_llama3_pre_tokenizer, ignore_merges=True, add_bos=True),
    "llama-v3": PreTokenizerSpec(_llama3_pre_tokenizer, ignore_merges=True, add_bos=True),
}


def _byte_level_bpe_from_gguf(metadata: Mapping[str, Any], source: str) -> HFTokenizer:
    """Build a GGUF `gpt2` vocabulary as a `tokenizers` byte-level BPE tokenizer."""
    pre = metadata.get("tokenizer.ggml.pre")
    spec = GGUF_PRE_TOKENIZERS.get(pre) if isinstance(pre, str) else None
    if spec is None:
        raise TokenizerError(
            f"{source}: unsupported GGUF pre-tokenizer tokenizer.ggml.pre = {pre!r}; "
            f"supported: {', '.join(sorted(GGUF_PRE_TOKENIZERS))}; pass --tokenizer with the model's tokenizer.json"
        )
    tokens = _gguf_array(metadata, "tokenizer.ggml.tokens", source, str)
    n_tokens = len(tokens)
    if "tokenizer.ggml.token_type" in metadata:
        token_types = _gguf_array(metadata, "tokenizer.ggml.token_type", source, int, n_tokens)
    else:
        token_types = [GGUF_TOKEN_NORMAL] * n_tokens
    merges = _parse_gguf_merges(_gguf_array(metadata, "tokenizer.ggml.merges", source, str), source)

    tokenizer = build_byte_level_bpe(tokens, token_types, merges, spec, source)
    return HFTokenizer(
        tokenizer,
        source=source,
        kind=f"gguf-gpt2/{pre}",
        bos_id=_gguf_token_id(metadata, "tokenizer.ggml.bos_token_id", source, n_tokens),
        eos_id=_gguf_token_id(metadata, "tokenizer.ggml.eos_token_id", source, n_tokens),
        add_bos=_gguf_bool(metadata, "tokenizer.ggml.add_bos_token", source, spec.add_bos),
        add_space_prefix=_gguf_bool(metadata, "tokenizer.ggml.add_space_prefix", source, False),
        warn_if_lossy=True,
        vocab_size=n_tokens,
        extra_stop_ids=_gguf_extra_stop_ids(metadata, source, n_tokens),
    )


def _parse_gguf_merges(merges: Sequence[str], source: str) -> list[tuple[str, str]]:
    # Byte-level pieces never contain a space (space is 'Ġ'), so one space separates a pair.
    pairs = []
    for index, merge in enumerate(merges):
        parts = merge.split(" ")
        if len(parts) != 2 or not all(parts):
            raise TokenizerError(f"{source}: tokenizer.ggml.merges[{index}] = {merge!r} is not two pieces joined by a space")
        pairs.append((parts[0], parts[1]))
    return pairs


def build_byte_level_bpe(
    tokens: Sequence[str],
    token_types: Sequence[int],
    merges: list[tuple[str, str]],
    spec: PreTokenizerSpec,
    source: str,
) -> Any:
    """Return a `tokenizers.Tokenizer`: BPE over vocab + merges, the pre-tokenizer of `spec`,
    a ByteLevel decoder, control tokens as special added tokens and user-defined ones as
    plain added tokens (both matched in the input text)."""
    from tokenizers import AddedToken, decoders, models
    from tokenizers import Tokenizer as HFCoreTokenizer

    vocab: dict[str, int] = {}
    for token_id, piece in enumerate(tokens):
        vocab.setdefault(piece, token_id)
    if len(vocab) != len(tokens):
        # NOTE: a repeated piece keeps its first id, so its later ids decode to nothing
        # and have no piece for id_to_piece.
        log.warning("%s: %d vocabulary pieces are repeated; each keeps its first id", source, len(tokens) - len(vocab))

    try:
        model = models.BPE(vocab=vocab, merges=merges, ignore_merges=spec.ignore_merges, fuse_unk=False)
    except Exception as exc:  # noqa: BLE001 - tokenizers reports invalid merges as a bare Exception.
        raise TokenizerError(f"{source}: cannot build the BPE model from the GGUF vocabulary: {exc}") from None
    tokenizer = HFCoreTokenizer(model)
    tokenizer.pre_tokenizer = spec.build()
    tokenizer.decoder = decoders.ByteLevel()

    controls, user_defined = [], []
    for token_id, (piece, token_type) in enumerate(zip(tokens, token_types)):
        if vocab[piece] != token_id:
            continue
        if token_type == GGUF_TOKEN_CONTROL:
            controls.append(AddedToken(piece, special=True, normalized=False))
        elif token_type == GGUF_TOKEN_USER_DEFINED:
            user_defined.append(AddedToken(piece, special=False, normalized=False))
    tokenizer.add_special_tokens(controls)
    tokenizer.add_tokens(user_defined)
    return tokenizer
