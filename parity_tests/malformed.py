"""Malformed checkpoints, configs, tokenizers and activation dumps, built from valid tiny files.

Every case starts from a small valid file and breaks one thing in it. The valid files come
from the project's own writers, except torch zip archives: `write_torch_zip` lays them out
as torch.save does, without importing torch. The breakages are truncation, wrong magic or
version, a size field far larger than the file, a shape or config mismatch, NaN or Inf
weights, missing or duplicate tensors and shards, and pickles that name a dangerous global.

`MalformedCase.build(folder)` writes the input and returns the path to open;
`open_input(case.kind, path)` opens it the way the command-line tools do and touches every
tensor. Each case names the error type the open must raise and message fragments that
name the problem. Nothing here is committed as a file: tests build the inputs in tmp_path.
"""

from __future__ import annotations

import collections
import json
import os
import pickle
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from parity_tests.checkpoint_writers import meta_params, write_llama2c
from parity_tests.tiny_models import random_weights, tiny_config, write_gguf
from weights_tools.checkpoint import Checkpoint
from weights_tools.config import ModelConfig
from weights_tools.errors import CheckpointError, ConfigError, LlamaParityError, TokenizerError

HUGE = 2**40  # a size no test file comes close to: any reader that believes it would allocate 1 TiB or more
GGUF_HEADER = struct.Struct("<4sIQQ")  # magic, version, tensor count, key/value count
CANARY = "CANARY"  # file a rejected pickle would create if it ran


# --- valid base files ----------------------------------------------------------------


def base_config(**overrides) -> ModelConfig:
    """The tiny grouped-query config every base file uses (hidden_dim 96 so Meta's rule derives it)."""
    return tiny_config(hidden_dim=96, **overrides)


def base_weights(config: ModelConfig | None = None) -> dict[str, np.ndarray]:
    return random_weights(config or base_config(), seed=7)


def write_base_gguf(folder: Path, name: str = "model.gguf", **writer_options) -> Path:
    """Write a valid llama GGUF with a 64-token vocabulary list."""
    config = base_config()
    tokens = [f"t{i}" for i in range(config.vocab_size)]
    return write_gguf(folder / name, config, base_weights(config), tokens=tokens, **writer_options)


def write_base_llama2c(folder: Path, version: int = 0) -> Path:
    config = base_config()
    return write_llama2c(folder / f"model-v{version}.bin", config, base_weights(config), version, shared_classifier=False)


def write_base_hf(folder: Path) -> Path:
    """Write a Hugging Face folder (config.json + model.safetensors) with llama-convert's writer."""
    from weights_tools.convert import write_hf

    config = base_config()
    folder.mkdir(parents=True, exist_ok=True)
    write_hf(Checkpoint.from_arrays(config, base_weights(config)), folder, progress=False)
    return folder


def write_base_canonical(folder: Path) -> Path:
    from weights_tools.convert import write_canonical

    config = base_config()
    folder.mkdir(parents=True, exist_ok=True)
    write_canonical(Checkpoint.from_arrays(config, base_weights(config)), folder, progress=False)
    return folder


def write_sharded_hf(folder: Path) -> Path:
    """Split a Hugging Face folder into two shards plus model.safetensors.index.json."""
    from safetensors.numpy import load_file, save_file

    write_base_hf(folder)
    tensors = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for file, file_names in halves.items():
        save_file({name: tensors[name] for name in file_names}, folder / file, metadata={"format": "pt"})
        weight_map.update({name: file for name in file_names})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


class GlobalName:
    """A module-level name written as a pickle GLOBAL without importing it (e.g. torch._utils._rebuild_tensor_v2)."""

    def __init__(self, module: str, name: str):
        self.module = module
        self.name = name

    def __call__(self, *args):
        raise TypeError("GlobalName is a pickling placeholder and cannot be called")


@dataclass(frozen=True)
class StorageRecord:
    key: str
    storage_type: str
    numel: int


class TensorRecord:
    """Pickles as torch does a tensor: _rebuild_tensor_v2(storage, offset, shape, stride, False, OrderedDict())."""

    def __init__(self, storage: StorageRecord, offset: int, shape: tuple[int, ...], stride: tuple[int, ...]):
        self.args = (storage, offset, shape, stride, False, collections.OrderedDict())

    def __reduce__(self):
        return GlobalName("torch._utils", "_rebuild_tensor_v2"), self.args


class TorchStylePickler(pickle._Pickler):
    """The pure-Python pickler, writing StorageRecords as torch's persistent ids and GlobalNames as GLOBAL."""

    dispatch = dict(pickle._Pickler.dispatch)

    def persistent_id(self, obj):
        if isinstance(obj, StorageRecord):
            return ("storage", GlobalName("torch", obj.storage_type), obj.key, "cpu", obj.numel)
        return None

    def save_global_name(self, obj: GlobalName) -> None:
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("ascii"))

    dispatch[GlobalName] = save_global_name


def torch_state_pickle(state: dict[str, np.ndarray], numel_override: dict[str, int] | None = None) -> bytes:
    """Return data.pkl for a float32 state dict whose storage keys are "0", "1", ... in order."""
    import io

    records = collections.OrderedDict()
    for key, (name, array) in enumerate(state.items()):
        numel = (numel_override or {}).get(name, array.size)
        storage = StorageRecord(str(key), "FloatStorage", numel)
        strides = tuple(s // array.itemsize for s in array.strides)
        records[name] = TensorRecord(storage, 0, tuple(array.shape), strides)
    buffer = io.BytesIO()
    TorchStylePickler(buffer, protocol=2).dump(records)
    return buffer.getvalue()


def write_torch_zip(
    path: Path,
    state: dict[str, np.ndarray],
    pickle_bytes: bytes | None = None,
    byteorder: str = "little",
    skip_storages: tuple[str, ...] = (),
) -> Path:
    """Write a torch.save-style zip: archive/data.pkl, archive/byteorder and one stored entry per storage."""
    pickle_bytes = torch_state_pickle(state) if pickle_bytes is None else pickle_bytes
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", pickle_bytes)
        archive.writestr("archive/byteorder", byteorder)
        for key, array in enumerate(state.values()):
            if str(key) in skip_storages:
                continue
            archive.writestr(f"archive/data/{key}", np.ascontiguousarray(array, dtype="<f4").tobytes())
        archive.writestr("archive/version", "3\n")
    return path


def write_base_meta(folder: Path, weights: dict[str, np.ndarray] | None = None, **params_extra) -> Path:
    """Write a Meta folder: params.json (multiple_of 32 gives hidden_dim 96) and consolidated.00.pth."""
    config = base_config()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.json").write_text(json.dumps(meta_params(config, 32, **params_extra)))
    write_torch_zip(folder / "consolidated.00.pth", weights if weights is not None else base_weights(config))
    return folder


def write_base_sentencepiece(folder: Path) -> Path:
    """Write a tiny SentencePiece tokenizer.model (8 pieces, no byte fallback), whose ids fit the base model."""
    from weights_tools.tokenizer import sentencepiece_proto_from_gguf

    tokens = ["<unk>", "<s>", "</s>", "▁a", "▁b", "▁ab", "a", "b"]
    metadata = {
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": [0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -4.0, -5.0],
        "tokenizer.ggml.token_type": [2, 3, 3, 1, 1, 1, 1, 1],
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
    }
    path = folder / "tokenizer.model"
    path.write_bytes(sentencepiece_proto_from_gguf(metadata, "test").SerializeToString())
    return path


def write_base_tokenizer_json(folder: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "a": 3, "b": 4}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    path = folder / "tokenizer.json"
    tokenizer.save(str(path))
    return path


def write_base_dump(folder: Path, name: str = "dump.safetensors") -> Path:
    from weights_tools.trace_format import TraceDump, write_dump

    rng = np.random.default_rng(3)
    activations = {
        "embed": rng.standard_normal((1, 3, 8)).astype(np.float32),
        "layers.0.attn_norm": rng.standard_normal((1, 3, 8)).astype(np.float32),
        "logits": rng.standard_normal((1, 3, 16)).astype(np.float32),
    }
    dump = TraceDump(activations, "numpy_llama", "test", "tiny", "float32", [1, 2, 3])
    return write_dump(dump, folder / name)


def memory_bound(path: Path) -> int:
    """Return the allowed tracemalloc peak for opening `path`: 64 x its size + 16 MiB.

    64 x covers converting every stored element to float32 (8 x for 4-bit quantized
    GGUF data) plus a cached copy and the temporaries of dequantization and RoPE row
    permutation. 16 MiB covers the Python objects of parsing (GGUF key/value fields,
    pickle and JSON headers) and modules first imported during the load.
    """
    if path.is_file():
        size = path.stat().st_size
    elif path.is_dir():
        size = sum(file.stat().st_size for file in path.rglob("*") if file.is_file())
    else:
        size = 0
    return 64 * size + 16 * 2**20


# --- byte-level mutations ------------------------------------------------------------


def write_file(path: Path, data: bytes | str) -> Path:
    """Write bytes or UTF-8 text to path and return the path."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.write_bytes(data)
    return path


def truncate(path: Path, size: int) -> Path:
    """Cut a file to `size` bytes (negative: that many bytes fewer)."""
    data = path.read_bytes()
    path.write_bytes(data[:size])
    return path


def patch(path: Path, offset: int, fmt: str, value) -> Path:
    """Overwrite a packed value at a byte offset."""
    data = bytearray(path.read_bytes())
    struct.pack_into(fmt, data, offset, value)
    path.write_bytes(bytes(data))
    return path


def offset_after(path: Path, marker: bytes, occurrence: int = 0) -> int:
    """Return the offset just after the n-th occurrence of marker (e.g. a GGUF key or tensor name)."""
    data = path.read_bytes()
    start = -1
    for _ in range(occurrence + 1):
        start = data.index(marker, start + 1)
    return start + len(marker)


def replace_bytes(path: Path, old: bytes, new: bytes) -> Path:
    """Replace the first occurrence of old with new, which has the same length."""
    assert len(old) == len(new)
    data = path.read_bytes()
    path.write_bytes(data.replace(old, new, 1))
    return path


def edit_json(path: Path, edit: Callable[[dict], None]) -> Path:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return path


def safetensors_header(path: Path) -> tuple[int, dict]:
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return length, json.loads(data[8 : 8 + length])


def poison_safetensors(path: Path, name: str, value: float) -> Path:
    """Set the first float32 element of one tensor of a safetensors file to value (NaN or Inf)."""
    length, header = safetensors_header(path)
    start = 8 + length + header[name]["data_offsets"][0]
    return patch(path, start, "<f", value)


def poisoned_weights(name: str, value: float) -> dict[str, np.ndarray]:
    weights = base_weights()
    weights[name] = weights[name].copy()
    weights[name].flat[5] = value
    return weights


# --- the cases -----------------------------------------------------------------------


@dataclass(frozen=True)
class MalformedCase:
    """One broken input: how to build it, how to open it and the error that must come out.

    kind: "checkpoint" (load_checkpoint, then every tensor), "tokenizer" (load_tokenizer)
    or "dump" (read_dump). fragments: lower-case substrings the error message must
    contain, naming the field or the problem. The message must also contain the name of
    the file or folder that `build` returns.
    """

    name: str
    kind: str
    build: Callable[[Path], Path]
    error: type[LlamaParityError]
    fragments: tuple[str, ...]


def open_input(kind: str, path: Path) -> None:
    """Open an input the way the command-line tools do; for checkpoints, convert every tensor."""
    if kind == "checkpoint":
        from weights_tools.loader import load_checkpoint

        checkpoint = load_checkpoint(path)
        for name in checkpoint:
            checkpoint[name]
    elif kind == "tokenizer":
        from weights_tools.tokenizer import load_tokenizer

        load_tokenizer(path)
    elif kind == "dump":
        from weights_tools.trace_format import read_dump

        read_dump(path)
    else:
        raise ValueError(f"unknown input kind {kind!r}")


def _gguf_cases() -> list[MalformedCase]:
    def gguf(folder: Path, **options) -> Path:
        return write_base_gguf(folder, **options)

    def truncated(size_of: Callable[[int], int]) -> Callable[[Path], Path]:
        def build(folder: Path) -> Path:
            path = gguf(folder)
            return truncate(path, size_of(path.stat().st_size))

        return build

    def header_field(offset: int, fmt: str, value: int) -> Callable[[Path], Path]:
        return lambda folder: patch(gguf(folder), offset, fmt, value)

    def after_key(key: bytes, delta: int, fmt: str, value: int) -> Callable[[Path], Path]:
        def build(folder: Path) -> Path:
            path = gguf(folder)
            return patch(path, offset_after(path, key) + delta, fmt, value)

        return build

    def without_key(key: str) -> Callable[[Path], Path]:
        def build(folder: Path) -> Path:
            config = base_config()
            return write_gguf(folder / "model.gguf", config, base_weights(config), skip_keys=(key,))

        return build

    def without_tensor(folder: Path) -> Path:
        config = base_config()
        weights = base_weights(config)
        del weights["layers.1.feed_forward.w3.weight"]
        return write_gguf(folder / "model.gguf", config, weights)

    def duplicate_tensor(folder: Path) -> Path:
        path = gguf(folder)
        return replace_bytes(path, b"blk.1.attn_norm.weight", b"blk.0.attn_norm.weight")

    def poisoned(value: float) -> Callable[[Path], Path]:
        def build(folder: Path) -> Path:
            config = base_config()
            return write_gguf(folder / "model.gguf", config, poisoned_weights("layers.0.attention.wq.weight", value))

        return build

    def other_architecture(folder: Path) -> Path:
        config = base_config()
        return write_gguf(folder / "model.gguf", config, base_weights(config), architecture="gptneox")

    def config_mismatch(folder: Path) -> Path:
        path = gguf(folder)
        return patch(path, offset_after(path, b"llama.feed_forward_length") + 4, "<I", 80)

    malformed = "truncated or malformed"
    tensor_info = b"token_embd.weight"  # then n_dims u32, dims u64 x n_dims, type u32, offset u64
    return [
        MalformedCase("gguf-empty-file", "checkpoint", truncated(lambda size: 0), CheckpointError, ("truncated: 0 bytes",)),
        MalformedCase("gguf-truncated-in-header", "checkpoint", truncated(lambda size: 10), CheckpointError, (malformed,)),
        MalformedCase("gguf-truncated-in-metadata", "checkpoint", truncated(lambda size: 200), CheckpointError, (malformed,)),
        MalformedCase("gguf-truncated-in-tensor-data", "checkpoint", truncated(lambda size: size // 2), CheckpointError, (malformed,)),
        MalformedCase("gguf-truncated-last-byte", "checkpoint", truncated(lambda size: size - 1), CheckpointError, (malformed,)),
        MalformedCase("gguf-wrong-magic", "checkpoint", lambda folder: replace_bytes(gguf(folder), b"GGUF", b"GGUX"), CheckpointError, ("not a gguf file", "magic")),
        MalformedCase("gguf-version-1", "checkpoint", header_field(4, "<I", 1), CheckpointError, ("gguf version 1 is not supported", "[version]")),
        MalformedCase("gguf-version-99", "checkpoint", header_field(4, "<I", 99), CheckpointError, ("gguf version 99 is not supported", "[version]")),
        MalformedCase("gguf-tensor-count-huge", "checkpoint", header_field(8, "<Q", HUGE), CheckpointError, (malformed,)),
        MalformedCase("gguf-kv-count-huge", "checkpoint", header_field(16, "<Q", HUGE), CheckpointError, (malformed,)),
        MalformedCase("gguf-key-length-huge", "checkpoint", header_field(24, "<Q", HUGE), CheckpointError, (malformed,)),
        MalformedCase("gguf-array-length-huge", "checkpoint", after_key(b"tokenizer.ggml.tokens", 8, "<Q", HUGE), CheckpointError, (malformed,)),
        MalformedCase("gguf-string-length-huge", "checkpoint", after_key(b"tokenizer.ggml.tokens", 16, "<Q", HUGE), CheckpointError, (malformed,)),
        MalformedCase("gguf-tensor-dim-huge", "checkpoint", after_key(tensor_info, 4, "<Q", HUGE), CheckpointError, (malformed,)),
        MalformedCase("gguf-tensor-offset-past-end", "checkpoint", after_key(tensor_info, 24, "<Q", HUGE), CheckpointError, (malformed,)),
        MalformedCase("gguf-unknown-tensor-type", "checkpoint", after_key(tensor_info, 20, "<I", 99), CheckpointError, ("99",)),
        MalformedCase("gguf-unsupported-architecture", "checkpoint", other_architecture, CheckpointError, ("unsupported architecture", "general.architecture")),
        MalformedCase("gguf-block-count-huge", "checkpoint", after_key(b"llama.block_count", 4, "<I", 2**31 - 1), CheckpointError, ("2147483647 layers need", "llama.block_count")),
        MalformedCase("gguf-missing-metadata-key", "checkpoint", without_key("llama.block_count"), CheckpointError, ("missing", "llama.block_count")),
        MalformedCase("gguf-missing-tensor", "checkpoint", without_tensor, CheckpointError, ("missing", "blk.1.ffn_up.weight")),
        MalformedCase("gguf-duplicate-tensor", "checkpoint", duplicate_tensor, CheckpointError, ("duplicate", "blk.0.attn_norm.weight")),
        MalformedCase("gguf-shape-mismatch", "checkpoint", config_mismatch, CheckpointError, ("shape", "blk.0.ffn_gate.weight")),
        MalformedCase("gguf-nan-weight", "checkpoint", poisoned(float("nan")), CheckpointError, ("1 nan", "blk.0.attn_q.weight")),
        MalformedCase("gguf-inf-weight", "checkpoint", poisoned(float("-inf")), CheckpointError, ("1 infinite", "blk.0.attn_q.weight")),
    ]


def _meta_cases() -> list[MalformedCase]:
    def shard(folder: Path) -> Path:
        return write_base_meta(folder) / "consolidated.00.pth"

    def truncated_shard(folder: Path) -> Path:
        path = shard(folder)
        truncate(path, path.stat().st_size // 2)
        return path.parent

    def with_pickle(pickle_bytes: Callable[[dict], bytes]) -> Callable[[Path], Path]:
        def build(folder: Path) -> Path:
            weights = base_weights()
            write_base_meta(folder)
            write_torch_zip(folder / "consolidated.00.pth", weights, pickle_bytes=pickle_bytes(weights))
            return folder

        return build

    def truncated_pickle(weights: dict) -> bytes:
        data = torch_state_pickle(weights)
        return data[: len(data) // 2]

    def huge_bytes_pickle(weights: dict) -> bytes:
        # BINBYTES8 (protocol 4) declaring 2**40 bytes that the 3-byte payload does not have.
        return b"\x80\x04\x8e" + struct.pack("<Q", HUGE) + b"abc."

    def huge_numel_pickle(weights: dict) -> bytes:
        return torch_state_pickle(weights, numel_override={"norm.weight": HUGE})

    def view_past_storage(weights: dict) -> bytes:
        records = collections.OrderedDict()
        for key, (name, array) in enumerate(weights.items()):
            shape = tuple(array.shape)
            stride = tuple(s // array.itemsize for s in array.strides)
            if name == "norm.weight":
                stride = (HUGE,)  # the right shape, but each step jumps 2**40 elements
            records[name] = TensorRecord(StorageRecord(str(key), "FloatStorage", array.size), 0, shape, stride)
        import io

        buffer = io.BytesIO()
        TorchStylePickler(buffer, protocol=2).dump(records)
        return buffer.getvalue()

    def missing_storage(folder: Path) -> Path:
        write_base_meta(folder)
        write_torch_zip(folder / "consolidated.00.pth", base_weights(), skip_storages=("3",))
        return folder

    def big_endian(folder: Path) -> Path:
        write_base_meta(folder)
        write_torch_zip(folder / "consolidated.00.pth", base_weights(), byteorder="big")
        return folder

    def missing_first_shard(folder: Path) -> Path:
        write_base_meta(folder)
        os.replace(folder / "consolidated.00.pth", folder / "consolidated.01.pth")
        return folder

    def without_tensor(folder: Path) -> Path:
        weights = base_weights()
        del weights["layers.0.attention.wk.weight"]
        return write_base_meta(folder, weights)

    def poisoned(folder: Path) -> Path:
        return write_base_meta(folder, poisoned_weights("layers.1.feed_forward.w2.weight", float("nan")))

    def params(edit: Callable[[dict], None]) -> Callable[[Path], Path]:
        def build(folder: Path) -> Path:
            write_base_meta(folder)
            edit_json(folder / "params.json", edit)
            return folder

        return build

    def params_text(text: str) -> Callable[[Path], Path]:
        def build(folder: Path) -> Path:
            write_base_meta(folder)
            (folder / "params.json").write_text(text)
            return folder

        return build

    return [
        MalformedCase("pth-truncated-zip", "checkpoint", truncated_shard, CheckpointError, ("truncated",)),
        MalformedCase("pth-not-a-zip", "checkpoint", lambda folder: write_file(write_base_meta(folder) / "consolidated.00.pth", b"\x80\x02}q\x00." * 8).parent, CheckpointError, ("not a readable zip",)),
        MalformedCase("pth-truncated-pickle", "checkpoint", with_pickle(truncated_pickle), CheckpointError, ("malformed pickle", "data.pkl")),
        MalformedCase("pth-pickle-length-huge", "checkpoint", with_pickle(huge_bytes_pickle), CheckpointError, ("pickle", "data.pkl")),
        MalformedCase("pth-storage-numel-huge", "checkpoint", with_pickle(huge_numel_pickle), CheckpointError, ("storage entry has", "archive/data/")),
        MalformedCase("pth-view-past-storage", "checkpoint", with_pickle(view_past_storage), CheckpointError, ("runs past the end of its storage",)),
        MalformedCase("pth-storage-missing", "checkpoint", missing_storage, CheckpointError, ("storage entry is missing", "archive/data/3")),
        MalformedCase("pth-big-endian", "checkpoint", big_endian, CheckpointError, ("big-endian", "byteorder")),
        MalformedCase("pth-missing-shard", "checkpoint", missing_first_shard, CheckpointError, ("shard is missing", "consolidated.00.pth")),
        MalformedCase("pth-missing-tensor", "checkpoint", without_tensor, CheckpointError, ("missing", "layers.0.attention.wk.weight")),
        MalformedCase("pth-nan-weight", "checkpoint", poisoned, CheckpointError, ("1 nan", "layers.1.feed_forward.w2.weight")),
        MalformedCase("params-invalid-json", "checkpoint", params_text('{"dim": 32,'), ConfigError, ("invalid json", "params.json")),
        MalformedCase("params-not-an-object", "checkpoint", params_text("[1, 2]"), ConfigError, ("json object", "params.json")),
        MalformedCase("params-missing-dim", "checkpoint", params(lambda p: p.pop("dim")), ConfigError, ("'dim'", "missing")),
        MalformedCase("params-dim-is-text", "checkpoint", params(lambda p: p.update(dim="32")), ConfigError, ("'dim'", "'32'")),
        MalformedCase("params-negative-layers", "checkpoint", params(lambda p: p.update(n_layers=-2)), ConfigError, ("'n_layers'", "positive")),
        MalformedCase("params-layers-huge", "checkpoint", params(lambda p: p.update(n_layers=2**31 - 1)), CheckpointError, ("2147483647 layers need", "[n_layers]")),
        MalformedCase("params-heads-do-not-divide", "checkpoint", params(lambda p: p.update(n_heads=5, n_kv_heads=5)), ConfigError, ("'n_heads'", "divisible")),
        MalformedCase("params-vocab-mismatch", "checkpoint", params(lambda p: p.update(vocab_size=100)), ConfigError, ("'vocab_size'", "100")),
        MalformedCase("params-dim-mismatch", "checkpoint", params(lambda p: p.update(dim=64)), ConfigError, ("'dim'", "32 columns")),
        MalformedCase("params-hidden-dim-mismatch", "checkpoint", params(lambda p: p.update(multiple_of=64)), ConfigError, ("'multiple_of'", "128")),
    ]


def evil_pickle_cases() -> list[tuple[str, Callable[[Path], bytes], str]]:
    """Return (name, pickle factory, rejected global) for pickles that would run a command if loaded.

    Each factory takes the canary path that the command would create.
    """

    def reduce_to(module: str, name: str, args: Callable[[Path], tuple]) -> Callable[[Path], bytes]:
        def build(canary: Path) -> bytes:
            class Exploit:
                def __reduce__(self):
                    return GlobalName(module, name), args(canary)

            import io

            buffer = io.BytesIO()
            TorchStylePickler(buffer, protocol=2).dump({"tok_embeddings.weight": Exploit()})
            return buffer.getvalue()

        return build

    def os_system_reduce(canary: Path) -> bytes:
        # The classic attack, pickled by the standard pickler from a real __reduce__.
        command = f"touch {canary}"

        class Exploit:
            def __reduce__(self):
                return os.system, (command,)

        return pickle.dumps(Exploit(), protocol=2)

    def eval_in_protocol_4(canary: Path) -> bytes:
        # Protocol 4 names globals with STACK_GLOBAL instead of GLOBAL.
        class Exploit:
            def __reduce__(self):
                return eval, (f"open({str(canary)!r}, 'w')",)

        return pickle.dumps(collections.OrderedDict(x=Exploit()), protocol=4)

    touch = lambda canary: (f"touch {canary}",)  # noqa: E731
    return [
        ("pickle-os-system-reduce", os_system_reduce, f"{os.system.__module__}.system"),
        ("pickle-os-system-global", reduce_to("os", "system", touch), "os.system"),
        ("pickle-posix-system", reduce_to("posix", "system", touch), "posix.system"),
        ("pickle-builtins-eval", reduce_to("builtins", "eval", lambda c: (f"open({str(c)!r}, 'w')",)), "builtins.eval"),
        ("pickle-builtin-eval-protocol-2-name", reduce_to("__builtin__", "eval", lambda c: (f"open({str(c)!r}, 'w')",)), "__builtin__.eval"),
        ("pickle-eval-stack-global", eval_in_protocol_4, "builtins.eval"),
        ("pickle-subprocess-popen", reduce_to("subprocess", "Popen", lambda c: (["touch", str(c)],)), "subprocess.Popen"),
        ("pickle-subprocess-call", reduce_to("subprocess", "call", lambda c: (["touch", str(c)],)), "subprocess.call"),
        ("pickle-getattr-gadget", reduce_to("builtins", "getattr", lambda c: ("text", "upper")), "builtins.getattr"),
        ("pickle-torch-load-gadget", reduce_to("torch", "load", lambda c: (str(c),)), "torch.load"),
    ]


def _evil_pickle_case(name: str, factory: Callable[[Path], bytes], rejected: str) -> MalformedCase:
    def build(folder: Path) -> Path:
        write_base_meta(folder)
        write_torch_zip(folder / "consolidated.00.pth", base_weights(), pickle_bytes=factory(folder / CANARY))
        return folder

    return MalformedCase(name, "checkpoint", build, CheckpointError, (f"global {rejected.lower()}",))


def _safetensors_cases() -> list[MalformedCase]:
    def hf(folder: Path) -> Path:
        return write_base_hf(folder)

    def on_weights(mutate: Callable[[Path], None]) -> Callable[[Path], Path]:
        def build(folder: Path) -> Path:
            hf(folder)
            mutate(folder / "model.safetensors")
            return folder

        return build

    def config(edit: Callable[[dict], None]) -> Callable[[Path], Path]:
        def build(folder: Path) -> Path:
            hf(folder)
            edit_json(folder / "config.json", edit)
            return folder

        return build

    def unsupported_dtype(path: Path) -> None:
        from safetensors.numpy import load_file, save_file

        tensors = load_file(path)
        tensors["model.norm.weight"] = tensors["model.norm.weight"].astype(np.int64)
        save_file(tensors, path)

    def drop_tensor(path: Path) -> None:
        from safetensors.numpy import load_file, save_file

        tensors = load_file(path)
        del tensors["model.layers.1.mlp.up_proj.weight"]
        save_file(tensors, path)

    def header_not_json(path: Path) -> None:
        patch(path, 8, "<c", b"@")

    def sharded(mutate: Callable[[Path], None]) -> Callable[[Path], Path]:
        def build(folder: Path) -> Path:
            write_sharded_hf(folder)
            mutate(folder)
            return folder

        return build

    def index_edit(edit: Callable[[dict], None]) -> Callable[[Path], None]:
        return lambda folder: edit_json(folder / "model.safetensors.index.json", edit) and None

    def canonical(edit: Callable[[Path], None]) -> Callable[[Path], Path]:
        def build(folder: Path) -> Path:
            write_base_canonical(folder)
            edit(folder)
            return folder

        return build

    def canonical_extra_tensor(folder: Path) -> None:
        from safetensors.numpy import load_file, save_file

        tensors = load_file(folder / "model.safetensors")
        tensors["layers.9.attention.wq.weight"] = tensors["layers.0.attention.wq.weight"]
        save_file(tensors, folder / "model.safetensors")

    malformed = "truncated or malformed"
    return [
        MalformedCase("safetensors-empty-file", "checkpoint", on_weights(lambda p: truncate(p, 0)), CheckpointError, (malformed,)),
        MalformedCase("safetensors-truncated-header", "checkpoint", on_weights(lambda p: truncate(p, 50)), CheckpointError, (malformed,)),
        MalformedCase("safetensors-truncated-data", "checkpoint", on_weights(lambda p: truncate(p, -4)), CheckpointError, (malformed,)),
        MalformedCase("safetensors-header-length-huge", "checkpoint", on_weights(lambda p: patch(p, 0, "<Q", 2**50)), CheckpointError, (malformed,)),
        MalformedCase("safetensors-header-not-json", "checkpoint", on_weights(header_not_json), CheckpointError, (malformed,)),
        MalformedCase("safetensors-unsupported-dtype", "checkpoint", on_weights(unsupported_dtype), CheckpointError, ("i64", "model.norm.weight")),
        MalformedCase("safetensors-nan-weight", "checkpoint", on_weights(lambda p: poison_safetensors(p, "model.layers.0.self_attn.v_proj.weight", float("nan"))), CheckpointError, ("1 nan", "model.layers.0.self_attn.v_proj.weight")),
        MalformedCase("safetensors-inf-weight", "checkpoint", on_weights(lambda p: poison_safetensors(p, "lm_head.weight", float("inf"))), CheckpointError, ("1 infinite", "output.weight")),
        MalformedCase("hf-missing-tensor", "checkpoint", on_weights(drop_tensor), CheckpointError, ("missing", "model.layers.1.mlp.up_proj.weight")),
        MalformedCase("hf-config-invalid-json", "checkpoint", lambda folder: write_file(hf(folder) / "config.json", "{").parent, CheckpointError, ("invalid json", "config.json")),
        MalformedCase("hf-config-missing-field", "checkpoint", config(lambda c: c.pop("hidden_size")), ConfigError, ("'hidden_size'", "missing")),
        MalformedCase("hf-config-model-type", "checkpoint", config(lambda c: c.update(model_type="mistral")), ConfigError, ("'model_type'", "mistral")),
        MalformedCase("hf-config-rope-type", "checkpoint", config(lambda c: c.update(rope_scaling={"rope_type": "yarn", "factor": 4.0})), ConfigError, ("rope_scaling.rope_type", "yarn")),
        MalformedCase("hf-config-layers-huge", "checkpoint", config(lambda c: c.update(num_hidden_layers=2**31 - 1)), CheckpointError, ("2147483647 layers need", "num_hidden_layers")),
        MalformedCase("hf-config-shape-mismatch", "checkpoint", config(lambda c: c.update(intermediate_size=80)), CheckpointError, ("shape", "model.layers.0.mlp.gate_proj.weight")),
        MalformedCase("hf-index-missing-shard", "checkpoint", sharded(lambda f: (f / "model-00002-of-00002.safetensors").unlink()), CheckpointError, ("shard", "missing", "model-00002-of-00002.safetensors")),
        MalformedCase("hf-index-tensor-not-in-shard", "checkpoint", sharded(index_edit(lambda i: i["weight_map"].update({"model.norm.weight": "model-00002-of-00002.safetensors" if i["weight_map"]["model.norm.weight"].startswith("model-00001") else "model-00001-of-00002.safetensors"}))), CheckpointError, ("missing from the shard", "model.norm.weight")),
        MalformedCase("hf-index-empty-weight-map", "checkpoint", sharded(index_edit(lambda i: i.update(weight_map={}))), CheckpointError, ("weight_map",)),
        MalformedCase("canonical-format-version", "checkpoint", canonical(lambda f: edit_json(f / "config.json", lambda c: c.update(format_version=2))), ConfigError, ("'format_version'", "2")),
        MalformedCase("canonical-unexpected-tensor", "checkpoint", canonical(canonical_extra_tensor), CheckpointError, ("unexpected tensor", "layers.9.attention.wq.weight")),
        MalformedCase("canonical-layers-huge", "checkpoint", canonical(lambda f: edit_json(f / "config.json", lambda c: c["model_config"].update(n_layers=2**31 - 1))), CheckpointError, ("2147483647 layers need", "model_config.n_layers")),
        MalformedCase("canonical-bad-model-config", "checkpoint", canonical(lambda f: edit_json(f / "config.json", lambda c: c["model_config"].update(n_kv_heads=3))), ConfigError, ("'n_kv_heads'", "divisible")),
    ]


def _llama2c_cases() -> list[MalformedCase]:
    def header(version: int, index: int, value: int) -> Callable[[Path], Path]:
        # index counts int32 fields: legacy 0..6 are the seven params; version 1 has magic and version first.
        def build(folder: Path) -> Path:
            return patch(write_base_llama2c(folder, version), 4 * index, "<i", value)

        return build

    def poisoned(folder: Path) -> Path:
        config = base_config()
        weights = poisoned_weights("layers.0.feed_forward.w1.weight", float("inf"))
        return write_llama2c(folder / "model.bin", config, weights, 1, shared_classifier=False)

    def trailing(folder: Path) -> Path:
        path = write_base_llama2c(folder)
        path.write_bytes(path.read_bytes() + b"\0" * 4)
        return path

    return [
        MalformedCase("llama2c-too-short", "checkpoint", lambda folder: truncate(write_base_llama2c(folder), 12), CheckpointError, ("too short",)),
        MalformedCase("llama2c-truncated", "checkpoint", lambda folder: truncate(write_base_llama2c(folder), -4), CheckpointError, ("truncated",)),
        MalformedCase("llama2c-v1-truncated-header", "checkpoint", lambda folder: truncate(write_base_llama2c(folder, 1), 100), CheckpointError, ("256-byte", "header")),
        MalformedCase("llama2c-trailing-bytes", "checkpoint", trailing, CheckpointError, ("file has trailing bytes", "n_layers=2")),
        MalformedCase("llama2c-dim-huge", "checkpoint", header(0, 0, 2**20), CheckpointError, ("truncated", "header")),
        MalformedCase("llama2c-layers-huge", "checkpoint", header(0, 2, 2**31 - 1), CheckpointError, ("truncated", "n_layers=2147483647")),
        MalformedCase("llama2c-v1-vocab-huge", "checkpoint", header(1, 7, 2**30), CheckpointError, ("truncated", "header")),
        MalformedCase("llama2c-negative-dim", "checkpoint", header(0, 0, -32), CheckpointError, ("header.dim", "positive")),
        MalformedCase("llama2c-heads-do-not-divide", "checkpoint", header(0, 3, 5), CheckpointError, ("header.n_heads", "divisible")),
        MalformedCase("llama2c-version-2", "checkpoint", header(1, 1, 2), CheckpointError, ("version 2",)),
        MalformedCase("llama2c-inf-weight", "checkpoint", poisoned, CheckpointError, ("1 infinite", "layers.0.feed_forward.w1.weight")),
        MalformedCase("checkpoint-not-found", "checkpoint", lambda folder: folder / "missing.gguf", CheckpointError, ("not found",)),
        MalformedCase("checkpoint-unknown-file", "checkpoint", lambda folder: write_file(folder / "model.txt", "hello"), CheckpointError, ("unrecognized checkpoint file",)),
        MalformedCase("checkpoint-empty-folder", "checkpoint", lambda folder: folder, CheckpointError, ("unrecognized checkpoint folder",)),
    ]


def _tokenizer_cases() -> list[MalformedCase]:
    def spm(mutate: Callable[[Path], Path]) -> Callable[[Path], Path]:
        return lambda folder: mutate(write_base_sentencepiece(folder))

    def gguf_without_scores(folder: Path) -> Path:
        path = write_base_gguf(folder)
        return replace_bytes(path, b"tokenizer.ggml.model", b"tokenizer.ggml.mode_")

    def gguf_llama_vocab_without_scores(folder: Path) -> Path:
        return write_base_gguf(folder)  # write_gguf stores tokens only, no scores or types

    def tiktoken_gap(folder: Path) -> Path:
        import base64

        lines = [f"{base64.b64encode(bytes([b])).decode()} {b if b < 100 else b + 1}" for b in range(256)]
        path = folder / "tokenizer.model"
        path.write_text("\n".join(lines) + "\n")
        return path

    return [
        MalformedCase("tokenizer-not-found", "tokenizer", lambda folder: folder / "tokenizer.model", TokenizerError, ("not found",)),
        MalformedCase("tokenizer-empty-file", "tokenizer", lambda folder: write_file(folder / "tokenizer.model", b""), TokenizerError, ("empty",)),
        MalformedCase("tokenizer-unknown-format", "tokenizer", lambda folder: write_file(folder / "tokenizer.model", b"\xff\xfe\x00junk"), TokenizerError, ("unknown tokenizer format",)),
        MalformedCase("sentencepiece-truncated", "tokenizer", spm(lambda p: truncate(p, p.stat().st_size // 2)), TokenizerError, ("truncated",)),
        MalformedCase("sentencepiece-piece-length-huge", "tokenizer", spm(lambda p: patch(p, 1, "<B", 0xFF) and patch(p, 2, "<B", 0xFF)), TokenizerError, ("sentencepiece",)),
        MalformedCase("tokenizer-json-truncated", "tokenizer", lambda folder: truncate(write_base_tokenizer_json(folder), 40), TokenizerError, ("not a valid json",)),
        MalformedCase("tokenizer-json-not-a-tokenizer", "tokenizer", lambda folder: write_file(folder / "tokenizer.json", '{"model": 3}'), TokenizerError, ("tokenizers",)),
        MalformedCase("tiktoken-rank-gap", "tokenizer", tiktoken_gap, TokenizerError, ("ranks are not",)),
        MalformedCase("gguf-vocabulary-without-model", "tokenizer", gguf_without_scores, TokenizerError, ("no embedded tokenizer",)),
        MalformedCase("gguf-vocabulary-without-scores", "tokenizer", gguf_llama_vocab_without_scores, TokenizerError, ("tokenizer.ggml.scores", "missing")),
    ]


def _dump_cases() -> list[MalformedCase]:
    def dump(mutate: Callable[[Path], Path]) -> Callable[[Path], Path]:
        return lambda folder: mutate(write_base_dump(folder))

    def rewrite_metadata(edit: Callable[[dict], None]) -> Callable[[Path], Path]:
        def mutate(path: Path) -> Path:
            from safetensors.numpy import load_file, save_file
            from safetensors import safe_open

            with safe_open(path, framework="numpy") as handle:
                metadata = dict(handle.metadata())
            edit(metadata)
            save_file(load_file(path), path, metadata=metadata)
            return path

        return mutate

    def plain_safetensors(folder: Path) -> Path:
        from safetensors.numpy import save_file

        path = folder / "dump.safetensors"
        save_file({"embed": np.zeros((1, 2, 3), np.float32)}, path)
        return path

    return [
        MalformedCase("dump-not-found", "dump", lambda folder: folder / "dump.safetensors", CheckpointError, ("not found",)),
        MalformedCase("dump-truncated", "dump", dump(lambda p: truncate(p, p.stat().st_size - 8)), CheckpointError, ("not a readable safetensors",)),
        MalformedCase("dump-header-length-huge", "dump", dump(lambda p: patch(p, 0, "<Q", 2**50)), CheckpointError, ("not a readable safetensors",)),
        MalformedCase("dump-not-a-dump", "dump", plain_safetensors, CheckpointError, ("not an activation dump", "format")),
        MalformedCase("dump-wrong-version", "dump", dump(rewrite_metadata(lambda m: m.update(format_version="9"))), CheckpointError, ("version '9'", "format_version")),
        MalformedCase("dump-order-mismatch", "dump", dump(rewrite_metadata(lambda m: m.update(trace_order='["embed", "logits"]'))), CheckpointError, ("trace_order", "layers.0.attn_norm")),
        MalformedCase("dump-bad-prompt-ids", "dump", dump(rewrite_metadata(lambda m: m.update(prompt_ids="[1, 2"))), CheckpointError, ("not valid json", "prompt_ids")),
    ]


def malformed_cases() -> list[MalformedCase]:
    """Return every malformed-input case, each with a unique name."""
    cases = (
        _gguf_cases()
        + _meta_cases()
        + [_evil_pickle_case(*case) for case in evil_pickle_cases()]
        + _safetensors_cases()
        + _llama2c_cases()
        + _tokenizer_cases()
        + _dump_cases()
    )
    names = [case.name for case in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    return cases
