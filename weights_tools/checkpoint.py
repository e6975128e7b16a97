"""The canonical checkpoint: a ModelConfig plus float32 tensors under Meta's names.

Every reader converts its format into this one form, so both implementations load
weights the same way. Tensor names and layouts follow Meta's reference `llama/model.py`:

    tok_embeddings.weight                      [vocab_size, dim]
    layers.{i}.attention_norm.weight           [dim]
    layers.{i}.attention.wq.weight             [n_heads * head_dim, dim]
    layers.{i}.attention.wk.weight             [n_kv_heads * head_dim, dim]
    layers.{i}.attention.wv.weight             [n_kv_heads * head_dim, dim]
    layers.{i}.attention.wo.weight             [dim, n_heads * head_dim]
    layers.{i}.ffn_norm.weight                 [dim]
    layers.{i}.feed_forward.w1.weight          [hidden_dim, dim]   (gate)
    layers.{i}.feed_forward.w2.weight          [dim, hidden_dim]   (down)
    layers.{i}.feed_forward.w3.weight          [hidden_dim, dim]   (up)
    norm.weight                                [dim]
    output.weight                              [vocab_size, dim]

Linear weights are stored [out_features, in_features] as in PyTorch, so y = x @ W.T.
Rows of wq and wk are in the interleaved-pair RoPE layout: within each head, rows
(2i, 2i+1) form the pair rotated by frequency i.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from weights_tools.config import ModelConfig
from weights_tools.errors import CheckpointError

LAYER_TENSORS = (
    "attention_norm.weight",
    "attention.wq.weight",
    "attention.wk.weight",
    "attention.wv.weight",
    "attention.wo.weight",
    "ffn_norm.weight",
    "feed_forward.w1.weight",
    "feed_forward.w2.weight",
    "feed_forward.w3.weight",
)


def canonical_names(n_layers: int) -> list[str]:
    """Return every tensor name a checkpoint with n_layers blocks contains, in load order."""
    names = ["tok_embeddings.weight"]
    for i in range(n_layers):
        names.extend(f"layers.{i}.{suffix}" for suffix in LAYER_TENSORS)
    names.extend(["norm.weight", "output.weight"])
    return names


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Return the shape of every canonical tensor for a config."""
    dim, hidden, hd = config.dim, config.hidden_dim, config.head_dim
    per_layer = {
        "attention_norm.weight": (dim,),
        "attention.wq.weight": (config.n_heads * hd, dim),
        "attention.wk.weight": (config.n_kv_heads * hd, dim),
        "attention.wv.weight": (config.n_kv_heads * hd, dim),
        "attention.wo.weight": (dim, config.n_heads * hd),
        "ffn_norm.weight": (dim,),
        "feed_forward.w1.weight": (hidden, dim),
        "feed_forward.w2.weight": (dim, hidden),
        "feed_forward.w3.weight": (hidden, dim),
    }
    shapes: dict[str, tuple[int, ...]] = {"tok_embeddings.weight": (config.vocab_size, dim)}
    for i in range(config.n_layers):
        for suffix, shape in per_layer.items():
            shapes[f"layers.{i}.{suffix}"] = shape
    shapes["norm.weight"] = (dim,)
    shapes["output.weight"] = (config.vocab_size, dim)
    return shapes


def check_layer_count(config: ModelConfig, n_tensors: int, path: str | os.PathLike | None, field: str) -> None:
    """Raise CheckpointError when a file has too few tensors for config.n_layers blocks.

    Readers call this before expected_shapes or canonical_names, which build nine names per
    layer, so a header that claims 2**31 layers fails at once instead of after minutes of work.
    """
    required = 2 + len(LAYER_TENSORS) * config.n_layers  # plus tok_embeddings and norm; output may be tied
    if n_tensors < required:
        raise CheckpointError(
            path,
            f"{config.n_layers} layers need at least {required} tensors, but the file has {n_tensors}",
            field,
        )


def check_finite(array: np.ndarray, name: str, path: str | None, source_name: str | None = None) -> None:
    """Raise CheckpointError naming the tensor if a float32 array contains NaN or +-Inf.

    NaN and Inf always make a sum non-finite, so a finite float32 sum proves the whole
    array finite in one read pass with no temporary array (about 0.3 ns per element).
    Only a non-finite sum, which large finite values can also reach by overflow, pays
    for the exact element-wise count.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(np.sum(array)):
            return
    non_finite = ~np.isfinite(array)
    if not non_finite.any():
        return
    n_nan = int(np.count_nonzero(np.isnan(array)))
    n_inf = int(np.count_nonzero(non_finite)) - n_nan
    first = tuple(int(i) for i in np.unravel_index(int(np.argmax(non_finite)), array.shape))
    stored = f" (stored as {source_name})" if source_name and source_name != name else ""
    raise CheckpointError(
        path,
        f"tensor{stored} contains {n_nan} NaN and {n_inf} infinite values, the first at index {first}; "
        "the file is corrupt or was saved from a diverged run, so re-download or re-export it",
        name,
    )


@dataclass(frozen=True)
class TensorInfo:
    """Storage record of one tensor in the source file, before conversion to float32."""

    name: str
    shape: tuple[int, ...]
    stored_type: str
    source_name: str


@dataclass
class Checkpoint(Mapping[str, np.ndarray]):
    """A model config plus lazily loaded float32 tensors under canonical names.

    Reading `checkpoint[name]` converts that one tensor to float32 on first use and
    caches it unless `cache=False`, so a memory-mapped file is only paged in as needed.
    Each conversion also rejects NaN and infinite values (see check_finite).
    Iteration yields the canonical names in load order. With tied embeddings,
    `output.weight` is the same array as `tok_embeddings.weight`.
    """

    config: ModelConfig
    loaders: dict[str, Callable[[], np.ndarray]]
    infos: dict[str, TensorInfo]
    path: str | None = None
    format: str = "memory"
    metadata: dict[str, Any] = field(default_factory=dict)
    cache: bool = True
    _cached: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @classmethod
    def from_arrays(
        cls,
        config: ModelConfig,
        arrays: Mapping[str, np.ndarray],
        path: str | os.PathLike | None = None,
        format: str = "memory",
        metadata: dict[str, Any] | None = None,
    ) -> "Checkpoint":
        """Wrap in-memory arrays (already canonical names and layout) as a checkpoint."""
        arrays = dict(arrays)
        if config.tie_embeddings and "output.weight" not in arrays and "tok_embeddings.weight" in arrays:
            arrays["output.weight"] = arrays["tok_embeddings.weight"]
        loaders = {name: (lambda a=array: np.asarray(a, dtype=np.float32)) for name, array in arrays.items()}
        infos = {
            name: TensorInfo(name, tuple(np.shape(array)), str(np.asarray(array).dtype), name)
            for name, array in arrays.items()
        }
        checkpoint = cls(
            config=config,
            loaders=loaders,
            infos=infos,
            path=os.fspath(path) if path is not None else None,
            format=format,
            metadata=dict(metadata or {}),
        )
        checkpoint.check_complete()
        return checkpoint

    def __getitem__(self, name: str) -> np.ndarray:
        if name in self._cached:
            return self._cached[name]
        if name == "output.weight" and self.config.tie_embeddings:
            return self["tok_embeddings.weight"]
        if name not in self.loaders:
            raise KeyError(name)
        array = self.loaders[name]()
        expected = self.infos[name].shape
        if tuple(array.shape) != expected:
            raise CheckpointError(self.path, f"tensor has shape {tuple(array.shape)}, expected {expected}", name)
        if array.dtype != np.float32:
            array = array.astype(np.float32)
        check_finite(array, name, self.path, self.infos[name].source_name)
        if self.cache:
            self._cached[name] = array
        return array

    def __iter__(self) -> Iterator[str]:
        order = canonical_names(self.config.n_layers)
        return iter([name for name in order if name in self])

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __contains__(self, name: object) -> bool:
        if name == "output.weight" and self.config.tie_embeddings:
            return "tok_embeddings.weight" in self.loaders
        return name in self.loaders

    def check_complete(self) -> None:
        """Raise CheckpointError if a canonical tensor is missing or has the wrong shape.

        Only the recorded shapes are compared, so no tensor data is read.
        """
        check_layer_count(self.config, len(self.infos), self.path, "n_layers")
        shapes = expected_shapes(self.config)
        for name, shape in shapes.items():
            if name not in self:
                raise CheckpointError(self.path, "required tensor is missing", name)
            info = self.infos.get(name) or self.infos["tok_embeddings.weight"]
            if tuple(info.shape) != shape:
                raise CheckpointError(
                    self.path,
                    f"tensor has shape {tuple(info.shape)} but the config implies {shape}",
                    name,
                )

    def layer(self, i: int) -> dict[str, np.ndarray]:
        """Return layer i's tensors keyed by their suffix (e.g. 'attention.wq.weight')."""
        return {suffix: self[f"layers.{i}.{suffix}"] for suffix in LAYER_TENSORS}

    def load_all(self) -> dict[str, np.ndarray]:
        """Convert every tensor to float32 and return them as a plain dict."""
        return {name: self[name] for name in self}

    def weight_bytes(self) -> int:
        """Return the number of bytes all distinct tensors take in float32."""
        total = 0
        for name, info in self.infos.items():
            if name == "output.weight" and self.config.tie_embeddings:
                continue
            total += int(np.prod(info.shape)) * 4
        return total
