"""Read Meta's reference checkpoint folder (params.json + consolidated.NN.pth) into a Checkpoint.

Meta's files already use the canonical names and the interleaved-pair RoPE layout, so
the work is reading the torch zip archives without torch (see torch_pickle), deriving
hidden_dim the way Meta's `FeedForward` does, and merging model-parallel shards:

    column-parallel (split along axis 0): wq, wk, wv, w1, w3, output
    row-parallel (split along axis 1):    wo, w2
    tok_embeddings:                       axis 1 in Llama 2 (ParallelEmbedding splits dim),
                                          axis 0 in Llama 3 (VocabParallelEmbedding)
    replicated:                           attention_norm, ffn_norm, norm
    ignored:                              rope.freqs (recomputed from rope_theta)
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np

from weights_tools.checkpoint import Checkpoint, TensorInfo, canonical_names, check_layer_count, expected_shapes
from weights_tools.config import ModelConfig, RopeScaling
from weights_tools.errors import CheckpointError, ConfigError
from weights_tools.torch_pickle import TensorRef, TorchArchive

log = logging.getLogger(__name__)

PARAMS_FILE = "params.json"
SHARD_PATTERN = re.compile(r"^consolidated\.(\d+)\.pth$")

COLUMN_PARALLEL = ("attention.wq", "attention.wk", "attention.wv", "feed_forward.w1", "feed_forward.w3")
ROW_PARALLEL = ("attention.wo", "feed_forward.w2")
IGNORED_TENSORS = ("rope.freqs",)

# Llama 3.1 `apply_scaling` constants in Meta's reference code (llama-models).
LLAMA31_ROPE_SCALING = dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192)

# ModelArgs defaults in Meta's llama/model.py, used when params.json omits the field.
# Llama 2's params.json has no rope_theta because its code fixes theta at 10000.
DEFAULT_MULTIPLE_OF = 256
DEFAULT_NORM_EPS = 1e-5
DEFAULT_ROPE_THETA = 10000.0
DEFAULT_MAX_SEQ_LEN = 2048


def meta_hidden_dim(dim: int, multiple_of: int, ffn_dim_multiplier: float | None = None) -> int:
    """Return the SwiGLU width Meta's FeedForward derives from dim.

        hidden = int(2 * 4 * dim / 3), then int(ffn_dim_multiplier * hidden) if given,
        then rounded up to a multiple of multiple_of.
    """
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def shard_paths(folder: Path) -> list[Path]:
    """Return the consolidated.NN.pth files of a folder in shard order."""
    shards = sorted(
        (int(match.group(1)), path)
        for path in folder.iterdir()
        if (match := SHARD_PATTERN.match(path.name))
    )
    paths = [path for _, path in shards]
    for expected, (index, path) in enumerate(shards):
        if index != expected:
            raise CheckpointError(folder / f"consolidated.{expected:02d}.pth", "model-parallel shard is missing")
    return paths


def read_params(path: Path) -> dict[str, Any]:
    """Read params.json as a dict, raising ConfigError if it is missing or not a JSON object."""
    if not path.is_file():
        raise ConfigError(PARAMS_FILE, "file not found next to the .pth shards", path)
    try:
        params = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(PARAMS_FILE, f"invalid JSON: {exc}", path) from None
    if not isinstance(params, dict):
        raise ConfigError(PARAMS_FILE, f"the file must contain a JSON object, got a {type(params).__name__}", path)
    return params


def _number(params: dict[str, Any], key: str, path: Path, kind: type, default: Any = None) -> Any:
    if key not in params or params[key] is None:
        if default is None:
            raise ConfigError(key, f"required field is missing from {PARAMS_FILE}", path)
        return default
    value = params[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        expected = "an integer" if kind is int else "a number"
        raise ConfigError(key, f"expected {expected}, got {value!r}", path)
    return kind(value)


def rope_scaling_from_params(params: dict[str, Any], path: Path) -> RopeScaling | None:
    """Return Llama 3.1 RoPE scaling when params.json sets use_scaled_rope, else None.

    Later llama-models code passes the scale factor and high_freq_factor into
    apply_scaling, so optional rope_scaling_factor and rope_high_freq_factor keys override
    8 and 4. NOTE: those two key names are not checked against a released params.json.
    """
    if not params.get("use_scaled_rope", False):
        return None
    values = dict(LLAMA31_ROPE_SCALING)
    values["factor"] = _number(params, "rope_scaling_factor", path, float, values["factor"])
    values["high_freq_factor"] = _number(params, "rope_high_freq_factor", path, float, values["high_freq_factor"])
    try:
        return RopeScaling(**values)
    except ConfigError as exc:
        raise ConfigError(exc.field, str(exc).split(": ", 1)[-1], path) from None


def config_from_params(params: dict[str, Any], path: Path, vocab_rows: int) -> ModelConfig:
    """Build a ModelConfig from params.json; vocab_rows fills in `vocab_size: -1`."""
    dim = _number(params, "dim", path, int)
    n_heads = _number(params, "n_heads", path, int)
    vocab_size = _number(params, "vocab_size", path, int, -1)
    ffn_dim_multiplier = params.get("ffn_dim_multiplier")
    if ffn_dim_multiplier is not None:
        ffn_dim_multiplier = _number(params, "ffn_dim_multiplier", path, float)
    return ModelConfig(
        dim=dim,
        n_layers=_number(params, "n_layers", path, int),
        n_heads=n_heads,
        n_kv_heads=_number(params, "n_kv_heads", path, int, n_heads),
        vocab_size=vocab_rows if vocab_size == -1 else vocab_size,
        hidden_dim=meta_hidden_dim(
            dim, _number(params, "multiple_of", path, int, DEFAULT_MULTIPLE_OF), ffn_dim_multiplier
        ),
        norm_eps=_number(params, "norm_eps", path, float, DEFAULT_NORM_EPS),
        rope_theta=_number(params, "rope_theta", path, float, DEFAULT_ROPE_THETA),
        rope_scaling=rope_scaling_from_params(params, path),
        max_seq_len=_number(params, "max_seq_len", path, int, DEFAULT_MAX_SEQ_LEN),
        tie_embeddings=False,
        source=os.fspath(path),
    )


def concat_axis(name: str, shard_shape: tuple[int, ...], dim: int, n_shards: int) -> int | None:
    """Return the axis along which shards of `name` are concatenated, or None if replicated."""
    if name.endswith("norm.weight"):
        return None
    if name == "output.weight" or any(f".{part}.weight" in f".{name}" for part in COLUMN_PARALLEL):
        return 0
    if any(f".{part}.weight" in f".{name}" for part in ROW_PARALLEL):
        return 1
    if name == "tok_embeddings.weight":
        # Llama 2 splits the embedding width and Llama 3 the vocabulary. A shard of full width is Llama 3's.
        return 0 if n_shards > 1 and shard_shape[1] == dim else 1
    raise KeyError(name)


def _merged_shape(shapes: list[tuple[int, ...]], axis: int | None) -> tuple[int, ...]:
    if axis is None:
        return shapes[0]
    merged = list(shapes[0])
    merged[axis] = sum(shape[axis] for shape in shapes)
    return tuple(merged)


def _make_loader(archives: list[TorchArchive], refs: list[TensorRef], axis: int | None) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        if axis is None:
            return archives[0].load(refs[0]).astype(np.float32, copy=False)
        parts = [archive.load(ref) for archive, ref in zip(archives, refs)]
        return np.concatenate(parts, axis=axis).astype(np.float32, copy=False)

    return load


def _check_shards_agree(name: str, shapes: list[tuple[int, ...]], paths: list[Path], axis: int | None) -> None:
    for path, shape in zip(paths[1:], shapes[1:]):
        differs = [i for i in range(len(shape)) if i != axis and shape[i] != shapes[0][i]]
        if len(shape) != len(shapes[0]) or differs:
            raise CheckpointError(
                path, f"shard shape {shape} does not match {shapes[0]} in {paths[0].name}", name
            )


def load_meta(folder: str | os.PathLike) -> Checkpoint:
    """Open a Meta checkpoint folder and return a Checkpoint that reads tensors lazily.

    Raises ConfigError for a missing or invalid params.json field and CheckpointError for
    missing shards, tensors that are missing or disagree with params.json, and unsafe or
    malformed pickles.
    """
    folder = Path(folder)
    params_path = folder / PARAMS_FILE
    params = read_params(params_path)
    paths = shard_paths(folder)
    if not paths:
        raise CheckpointError(folder, "no consolidated.NN.pth shard found next to params.json")
    archives = [TorchArchive(path) for path in paths]

    names = set(archives[0].state_dict)
    for archive in archives[1:]:
        if set(archive.state_dict) != names:
            missing = sorted(names ^ set(archive.state_dict))[0]
            raise CheckpointError(archive.path, "the shards hold different tensor names", missing)
    if "tok_embeddings.weight" not in names:
        raise CheckpointError(paths[0], "required tensor is missing", "tok_embeddings.weight")

    dim = _number(params, "dim", params_path, int)
    embedding_shapes = [archive.state_dict["tok_embeddings.weight"].shape for archive in archives]
    embed_axis = concat_axis("tok_embeddings.weight", embedding_shapes[0], dim, len(archives))
    vocab_rows = _merged_shape(embedding_shapes, embed_axis)[0]
    config = config_from_params(params, params_path, vocab_rows)

    check_layer_count(config, len(names), params_path, "n_layers")
    known = set(canonical_names(config.n_layers))
    loaders = {}
    infos = {}
    for name in sorted(names):
        if name in IGNORED_TENSORS:
            continue
        if name not in known:
            raise CheckpointError(paths[0], f"unexpected tensor for a {config.n_layers}-layer model", name)
        refs = [archive.state_dict[name] for archive in archives]
        shapes = [ref.shape for ref in refs]
        axis = concat_axis(name, shapes[0], dim, len(archives)) if len(archives) > 1 else None
        _check_shards_agree(name, shapes, paths, axis)
        infos[name] = TensorInfo(name, _merged_shape(shapes, axis), refs[0].dtype_name, name)
        loaders[name] = _make_loader(archives, refs, axis)

    checkpoint = Checkpoint(
        config=config, loaders=loaders, infos=infos, path=os.fspath(folder), format="meta", metadata=dict(params)
    )
    _check_against_params(checkpoint, params_path, infos)
    log.info("opened %s: %d shards, %d tensors, %s", folder, len(paths), len(infos), config)
    return checkpoint


def _check_against_params(checkpoint: Checkpoint, params_path: Path, infos: dict[str, TensorInfo]) -> None:
    """Raise an error naming the params.json field behind a shape mismatch, when there is one."""
    config = checkpoint.config
    embedding = infos["tok_embeddings.weight"]
    if len(embedding.shape) == 2 and embedding.shape[1] != config.dim:
        raise ConfigError(
            "dim",
            f"params.json says {config.dim} but tok_embeddings.weight has {embedding.shape[1]} columns",
            params_path,
        )
    w1 = infos.get("layers.0.feed_forward.w1.weight")
    if w1 is not None and w1.shape[0] != config.hidden_dim:
        raise ConfigError(
            "multiple_of",
            f"multiple_of and ffn_dim_multiplier give hidden_dim {config.hidden_dim}, "
            f"but layers.0.feed_forward.w1.weight has {w1.shape[0]} rows",
            params_path,
        )
    if embedding.shape[0] != config.vocab_size:
        raise ConfigError(
            "vocab_size",
            f"params.json says {config.vocab_size} but tok_embeddings.weight has {embedding.shape[0]} rows",
            params_path,
        )
    shapes = expected_shapes(config)
    for name, shape in shapes.items():
        if name not in infos:
            raise CheckpointError(checkpoint.path, "required tensor is missing from the .pth shards", name)
        if infos[name].shape != shape:
            raise CheckpointError(
                checkpoint.path, f"tensor has shape {infos[name].shape} but params.json implies {shape}", name
            )
