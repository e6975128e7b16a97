"""Trace points, activation recording and the activation dump format, shared by every implementation.

Both implementations call `tracer(name, array)` at the same named points of the forward
pass, in this order. Shapes use B batch, S positions in the call, T = start_pos + S
positions attended to, D dim, H n_heads, K n_kv_heads, Hd head_dim, F hidden_dim,
V vocab_size. Names under `layers.{i}.` repeat for every transformer block i.

    name                  shape          value
    embed                 [B, S, D]      token embedding rows
    layers.{i}.attn_norm  [B, S, D]      RMSNorm of the block input (attention_norm)
    layers.{i}.q          [B, S, H, Hd]  x @ wq.T, interleaved-pair RoPE layout
    layers.{i}.k          [B, S, K, Hd]  x @ wk.T, interleaved-pair RoPE layout
    layers.{i}.v          [B, S, K, Hd]  x @ wv.T
    layers.{i}.q_rope     [B, S, H, Hd]  q after RoPE
    layers.{i}.k_rope     [B, S, K, Hd]  k after RoPE
    layers.{i}.attn_scores [B, H, S, T]  q k^T / sqrt(Hd) + causal mask (-inf above the diagonal)
    layers.{i}.attn_probs [B, H, S, T]   softmax of attn_scores over T
    layers.{i}.attn_heads [B, S, H*Hd]   concatenated head outputs, before wo
    layers.{i}.attn_out   [B, S, D]      attn_heads @ wo.T
    layers.{i}.resid_mid  [B, S, D]      block input + attn_out
    layers.{i}.ffn_norm   [B, S, D]      RMSNorm of resid_mid (ffn_norm)
    layers.{i}.ffn_gate   [B, S, F]      x @ w1.T
    layers.{i}.ffn_up     [B, S, F]      x @ w3.T
    layers.{i}.ffn_act    [B, S, F]      silu(ffn_gate) * ffn_up
    layers.{i}.ffn_out    [B, S, D]      ffn_act @ w2.T
    layers.{i}.resid_post [B, S, D]      resid_mid + ffn_out, the block output
    final_norm            [B, S, D]      RMSNorm of the last block output (norm)
    logits                [B, S, V]      final_norm @ output.T

A dump is a safetensors file with one float32 tensor per recorded trace point and these
string entries in the header's `__metadata__`:

    format                  "llama-parity-trace"
    format_version          "1"
    implementation          e.g. "numpy_llama", "tf_llama", "transformers"
    implementation_version  version string of that implementation
    model                   model path or name
    dtype                   compute dtype of the run: float32, float16 or bfloat16
    prompt_ids              JSON list of the prompt token ids (one sequence, start_pos 0)
    trace_order             JSON list of the stored names in execution order
    config                  JSON of ModelConfig.to_dict(), or "null" when unknown
    notes                   JSON object of free-form strings (e.g. how a layout was converted)

This module imports neither implementation, so numpy_llama, tf_llama and the parity tools
can all use it.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from weights_tools.errors import CheckpointError, LlamaParityError

DUMP_FORMAT = "llama-parity-trace"
DUMP_FORMAT_VERSION = "1"
COMPUTE_DTYPES = ("float32", "float16", "bfloat16")

# (name, shape, description) of the trace points outside the blocks and inside one block.
GLOBAL_HEAD = (("embed", "[B, S, D]", "token embedding rows"),)
LAYER_POINTS = (
    ("attn_norm", "[B, S, D]", "RMSNorm of the block input"),
    ("q", "[B, S, H, Hd]", "query projection, interleaved-pair RoPE layout"),
    ("k", "[B, S, K, Hd]", "key projection, interleaved-pair RoPE layout"),
    ("v", "[B, S, K, Hd]", "value projection"),
    ("q_rope", "[B, S, H, Hd]", "queries after RoPE"),
    ("k_rope", "[B, S, K, Hd]", "keys after RoPE"),
    ("attn_scores", "[B, H, S, T]", "q k^T / sqrt(Hd) + causal mask"),
    ("attn_probs", "[B, H, S, T]", "softmax of the scores"),
    ("attn_heads", "[B, S, H*Hd]", "concatenated head outputs before wo"),
    ("attn_out", "[B, S, D]", "attention output after wo"),
    ("resid_mid", "[B, S, D]", "block input + attn_out"),
    ("ffn_norm", "[B, S, D]", "RMSNorm of resid_mid"),
    ("ffn_gate", "[B, S, F]", "gate projection x @ w1.T"),
    ("ffn_up", "[B, S, F]", "up projection x @ w3.T"),
    ("ffn_act", "[B, S, F]", "silu(gate) * up"),
    ("ffn_out", "[B, S, D]", "feed-forward output after w2"),
    ("resid_post", "[B, S, D]", "resid_mid + ffn_out"),
)
GLOBAL_TAIL = (
    ("final_norm", "[B, S, D]", "RMSNorm of the last block output"),
    ("logits", "[B, S, V]", "output head"),
)
LAYER_KINDS = tuple(point[0] for point in LAYER_POINTS)
GLOBAL_KINDS = tuple(point[0] for point in GLOBAL_HEAD + GLOBAL_TAIL)

_LAYER_NAME = re.compile(r"^layers\.(\d+)\.([a-z_]+)$")


class TraceError(LlamaParityError, ValueError):
    """A trace point selection (pattern, layer list) or a recording request is invalid."""


def trace_point_names(n_layers: int) -> list[str]:
    """Return every trace point name of a model with n_layers blocks, in execution order."""
    names = [point[0] for point in GLOBAL_HEAD]
    for i in range(n_layers):
        names.extend(f"layers.{i}.{kind}" for kind in LAYER_KINDS)
    names.extend(point[0] for point in GLOBAL_TAIL)
    return names


def split_name(name: str) -> tuple[int | None, str]:
    """Split 'layers.3.q_rope' into (3, 'q_rope') and 'logits' into (None, 'logits').

    Raises TraceError for a name outside the vocabulary.
    """
    match = _LAYER_NAME.match(name)
    if match and match.group(2) in LAYER_KINDS:
        return int(match.group(1)), match.group(2)
    if name in GLOBAL_KINDS:
        return None, name
    raise TraceError(f"unknown trace point {name!r}; names are e.g. 'embed', 'layers.0.q_rope', 'logits'")


def kind_of(name: str) -> str:
    """Return the activation kind of a trace point: 'layers.3.q_rope' -> 'q_rope'."""
    return split_name(name)[1]


def layer_of(name: str) -> int | None:
    """Return the block index of a trace point, or None for embed, final_norm and logits."""
    return split_name(name)[0]


# Far above any released LLaMA (LLaMA 3.1 405B has 126 blocks); the model's own count is
# checked later by TraceSelection.check_layers.
MAX_LAYER_INDEX = 100_000


def parse_layers(spec: str) -> frozenset[int]:
    """Parse a layer list such as '0-3,10' into {0, 1, 2, 3, 10}.

    Ranges are inclusive at both ends. Raises TraceError on anything else.
    """
    layers: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        match = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if match is None:
            raise TraceError(f"invalid layer list {spec!r}: {part!r} is not N or N-M; write e.g. '0-3,10'")
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        if last < first:
            raise TraceError(f"invalid layer range {part!r} in {spec!r}: the end is before the start")
        # Checked before the range is expanded, so '0-9999999999' cannot fill memory.
        if last >= MAX_LAYER_INDEX:
            raise TraceError(
                f"invalid layer {last} in {spec!r}: layer indices stop at {MAX_LAYER_INDEX - 1}; "
                "name blocks that the model has, e.g. '0-3,10'"
            )
        layers.update(range(first, last + 1))
    if not layers:
        raise TraceError(f"layer list {spec!r} selects no layer; write e.g. '0-3,10'")
    return frozenset(layers)


@dataclass(frozen=True)
class TraceSelection:
    """A selection of the trace points to record or compare.

    patterns: fnmatch globs matched against the whole name (e.g. 'layers.*.q_rope',
    '*attn*'), or regular expressions written 're:PATTERN' and matched with re.search.
    A name is selected when it matches any pattern, or always when there are none.
    layers: block indices to keep; None keeps every block. embed, final_norm and logits
    are kept regardless of `layers`, but still go through the patterns.
    """

    patterns: tuple[str, ...] = ()
    layers: frozenset[int] | None = None
    _regexes: tuple[re.Pattern, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        regexes = []
        for pattern in self.patterns:
            if pattern.startswith("re:"):
                try:
                    regexes.append(re.compile(pattern[3:]))
                except re.error as exc:
                    raise TraceError(f"invalid regular expression {pattern[3:]!r} in --filter: {exc}") from None
            else:
                regexes.append(re.compile(fnmatch.translate(pattern)))
        object.__setattr__(self, "_regexes", tuple(regexes))

    @classmethod
    def from_strings(cls, patterns: Iterable[str] | None = None, layers: str | None = None) -> "TraceSelection":
        """Build a selection from command-line strings; a pattern may hold several, comma-separated."""
        split_patterns: list[str] = []
        for text in patterns or ():
            if text.startswith("re:"):
                found = [text] if text[3:] else []
            else:
                found = [part.strip() for part in text.split(",") if part.strip()]
            # An empty pattern list would select every trace point, the opposite of a filter.
            if not found:
                raise TraceError(f"--filter {text!r} contains no pattern; write e.g. --filter 'layers.*.q_rope'")
            split_patterns.extend(found)
        return cls(tuple(split_patterns), parse_layers(layers) if layers is not None else None)

    def check_layers(self, n_layers: int, source: str) -> None:
        """Raise TraceError when the selection requests a block that a model with n_layers blocks lacks."""
        if self.layers is None:
            return
        outside = sorted(layer for layer in self.layers if layer >= n_layers)
        if not outside:
            return
        listed = ", ".join(str(layer) for layer in outside[:5]) + (", ..." if len(outside) > 5 else "")
        if n_layers == 0:
            raise TraceError(f"--layers requests layer {listed}, but {source} has no layers; drop --layers")
        raise TraceError(
            f"--layers requests layer {listed}, but {source} has {n_layers} layers; "
            f"choose layers in the range 0..{n_layers - 1}"
        )

    def selects(self, name: str) -> bool:
        """Return True when the trace point `name` is selected."""
        match = _LAYER_NAME.match(name)
        if match and self.layers is not None and int(match.group(1)) not in self.layers:
            return False
        if not self._regexes:
            return True
        return any(regex.search(name) if pattern.startswith("re:") else regex.match(name)
                   for pattern, regex in zip(self.patterns, self._regexes))


class Recorder:
    """A tracer that stores float32 copies of the selected activations, in call order.

    Pass it as `tracer=` to a forward call: `recorder(name, array)` copies the array
    (NumPy, or anything np.asarray converts, such as an eager TF tensor) when the
    selection picks `name`, and ignores it otherwise. One recorder covers one forward
    call, because a name recorded twice raises TraceError; call `clear()` between calls.
    """

    def __init__(self, selection: TraceSelection | None = None):
        self.selection = selection or TraceSelection()
        self.activations: dict[str, np.ndarray] = {}

    def __call__(self, name: str, value: Any) -> None:
        if not self.selection.selects(name):
            return
        if name in self.activations:
            raise TraceError(f"trace point {name!r} was recorded twice; use one Recorder per forward call")
        self.activations[name] = np.array(value, dtype=np.float32, copy=True)

    @property
    def order(self) -> list[str]:
        """Return the recorded names in the order the forward pass produced them."""
        return list(self.activations)

    def clear(self) -> None:
        """Forget every recorded activation."""
        self.activations.clear()


@dataclass
class TraceDump:
    """Recorded activations of one forward pass plus what produced them.

    activations maps trace point names to float32 arrays and keeps execution order.
    """

    activations: dict[str, np.ndarray]
    implementation: str
    implementation_version: str
    model: str
    dtype: str
    prompt_ids: list[int]
    config: dict[str, Any] | None = None
    notes: dict[str, str] = field(default_factory=dict)
    path: str | None = None

    @property
    def order(self) -> list[str]:
        return list(self.activations)

    @property
    def label(self) -> str:
        """Short name for reports: the file name when read from disk, else the implementation."""
        return Path(self.path).name if self.path else self.implementation


def implementation_version(distribution: str = "llama-parity") -> str:
    """Return the installed version of a distribution, or "unknown" when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "unknown"


def _metadata_of(dump: TraceDump) -> dict[str, str]:
    return {
        "format": DUMP_FORMAT,
        "format_version": DUMP_FORMAT_VERSION,
        "implementation": dump.implementation,
        "implementation_version": dump.implementation_version,
        "model": dump.model,
        "dtype": dump.dtype,
        "prompt_ids": json.dumps([int(i) for i in dump.prompt_ids]),
        "trace_order": json.dumps(dump.order),
        "config": json.dumps(dump.config),
        "notes": json.dumps(dump.notes),
    }


def serialize_dump(dump: TraceDump, path: str | os.PathLike) -> bytes:
    """Return the safetensors bytes of a dump that will be written to path.

    Raises TraceError when the dump is inconsistent (unknown dtype or no activation).
    """
    from safetensors.numpy import save

    if dump.dtype not in COMPUTE_DTYPES:
        raise TraceError(f"dump dtype {dump.dtype!r} is not one of {', '.join(COMPUTE_DTYPES)}")
    if not dump.activations:
        raise TraceError(f"nothing to write to {path}: no trace point was recorded; check --filter and --layers")
    tensors = {name: np.ascontiguousarray(array, dtype=np.float32) for name, array in dump.activations.items()}
    return save(tensors, metadata=_metadata_of(dump))


def write_dump(dump: TraceDump, path: str | os.PathLike) -> Path:
    """Write a dump as safetensors, atomically (see write_files_atomic).

    Raises TraceError when the dump is inconsistent (unknown dtype or no activation),
    and OSError when the file cannot be written.
    """
    path = Path(path)
    write_files_atomic([(path, serialize_dump(dump, path))])
    return path


def _current_umask() -> int:
    # os.umask is the only portable way to read the mask, and it sets a new one while reading.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_files_atomic(outputs: Sequence[tuple[Path, bytes]]) -> None:
    """Write (path, bytes) pairs so that a failed write changes none of the target files.

    Every payload first goes to a temp file beside its target, is fsynced and gets mode
    0666 & ~umask, because the temp file starts at 0600. Only when all of them are written
    does os.replace move each one over its target. A failure before that removes every
    temp file and leaves the targets as they were. Raises OSError with `filename` set to
    the target path.
    NOTE: when os.replace fails for one target, the targets renamed before it keep
    their new content.
    """
    mode = 0o666 & ~_current_umask()
    staged: list[tuple[str, Path]] = []
    try:
        for path, data in outputs:
            folder = path.parent if str(path.parent) else Path(".")
            try:
                handle = tempfile.NamedTemporaryFile(dir=folder, prefix=f".{path.name}.", suffix=".tmp", delete=False)
                staged.append((handle.name, path))
                with handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                    os.fchmod(handle.fileno(), mode)
            except OSError as exc:
                _name_target(exc, path)
                raise
        while staged:
            temp_name, path = staged[0]
            try:
                os.replace(temp_name, path)
            except OSError as exc:
                _name_target(exc, path)
                raise
            staged.pop(0)
    except BaseException:
        for temp_name, _ in staged:
            Path(temp_name).unlink(missing_ok=True)
        raise


def _name_target(error: OSError, path: Path) -> None:
    """Point an OSError at the requested file rather than at its temp file."""
    error.filename = os.fspath(path)
    error.filename2 = None


def _require_metadata(metadata: Mapping[str, str], key: str, path: Path) -> str:
    if key not in metadata:
        raise CheckpointError(path, "activation dump header has no metadata entry; rewrite it with llama-parity", key)
    return metadata[key]


def _parse_json(text: str, key: str, path: Path, kind: type | tuple[type, ...]) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(path, f"metadata is not valid JSON ({exc.msg})", key) from None
    if not isinstance(value, kind):
        raise CheckpointError(path, f"metadata has the wrong type {type(value).__name__}", key)
    return value


def read_dump(path: str | os.PathLike) -> TraceDump:
    """Read and validate an activation dump written by write_dump.

    Raises CheckpointError naming the file and the field when the file is missing, is not
    safetensors, is not an activation dump, or its metadata disagrees with its tensors.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "activation dump not found; write one with 'llama-parity diff --dump' or 'llama-parity dump'")
    try:
        with safe_open(path, framework="numpy") as handle:
            metadata = handle.metadata() or {}
            names = set(handle.keys())
            tensors = {name: handle.get_tensor(name) for name in names}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(path, f"not a readable safetensors file ({exc})") from None

    if metadata.get("format") != DUMP_FORMAT:
        raise CheckpointError(path, f"not an activation dump: metadata 'format' is {metadata.get('format')!r}, expected {DUMP_FORMAT!r}", "format")
    version = _require_metadata(metadata, "format_version", path)
    if version != DUMP_FORMAT_VERSION:
        raise CheckpointError(path, f"unsupported dump version {version!r}; this tool reads version {DUMP_FORMAT_VERSION}", "format_version")

    dtype = _require_metadata(metadata, "dtype", path)
    if dtype not in COMPUTE_DTYPES:
        raise CheckpointError(path, f"unknown dtype {dtype!r}; expected one of {', '.join(COMPUTE_DTYPES)}", "dtype")
    prompt_ids = _parse_json(_require_metadata(metadata, "prompt_ids", path), "prompt_ids", path, list)
    if not prompt_ids or not all(isinstance(i, int) for i in prompt_ids):
        raise CheckpointError(path, "prompt_ids must be a non-empty list of integers", "prompt_ids")
    order = _parse_json(_require_metadata(metadata, "trace_order", path), "trace_order", path, list)
    config = _parse_json(metadata.get("config", "null"), "config", path, (dict, type(None)))
    notes = _parse_json(metadata.get("notes", "{}"), "notes", path, dict)

    if set(order) != names or len(order) != len(names):
        missing = sorted(set(order) - names) or sorted(names - set(order))
        raise CheckpointError(path, f"trace_order and the stored tensors disagree (first difference: {missing[0]!r})", "trace_order")
    for name in order:
        try:
            split_name(name)
        except TraceError:
            raise CheckpointError(path, "tensor name is not a trace point name", name) from None
        if tensors[name].dtype != np.float32:
            raise CheckpointError(path, f"tensor is {tensors[name].dtype}, expected float32", name)

    return TraceDump(
        activations={name: tensors[name] for name in order},
        implementation=_require_metadata(metadata, "implementation", path),
        implementation_version=_require_metadata(metadata, "implementation_version", path),
        model=_require_metadata(metadata, "model", path),
        dtype=dtype,
        prompt_ids=prompt_ids,
        config=config,
        notes={str(key): str(value) for key, value in notes.items()},
        path=str(path),
    )
