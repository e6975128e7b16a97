"""Read a `torch.save` file (the zip format of PyTorch >= 1.6) without importing torch.

The archive contains `<prefix>/data.pkl`, a pickle of the state dict, and one entry
`<prefix>/data/<key>` per storage with its raw little-endian bytes. torch writes the
entries uncompressed and 64-byte aligned, so each storage is a view into one read-only
memory map of the file and a tensor is read only when it is converted.

Unpickling runs code named by the file, so `SafeTorchUnpickler` resolves only the few
globals that rebuild tensors (see `ALLOWED_GLOBALS`). Any other global, such as
`os.system`, raises CheckpointError before it is looked up, so it never runs.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import pickletools
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from weights_tools.errors import CheckpointError

# torch storage class name -> element type stored in the archive.
STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
}

ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor"),
    *(("torch", name) for name in STORAGE_DTYPES),
}

_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, 22 bytes we skip, name and extra lengths
_LOCAL_HEADER_SIGNATURE = b"PK\x03\x04"


@dataclass(frozen=True)
class StorageRef:
    """A storage named in the pickle: archive entry key, element type and element count."""

    key: str
    dtype: np.dtype
    numel: int


@dataclass(frozen=True)
class TensorRef:
    """A tensor as the pickle describes it: a strided view of a storage (all in elements)."""

    storage: StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    @property
    def dtype_name(self) -> str:
        return str(self.storage.dtype)


@dataclass(frozen=True)
class _StorageType:
    """Stand-in for a torch storage class such as torch.FloatStorage, with only its element type."""

    name: str
    dtype: np.dtype


class SafeTorchUnpickler(pickle.Unpickler):
    """Unpickle a torch state dict into TensorRefs, resolving only ALLOWED_GLOBALS."""

    def __init__(self, file: io.BufferedIOBase, path: Path):
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise CheckpointError(
                self.path,
                f"the pickle references the global {module}.{name}, which a tensor state dict never needs; "
                "it was not loaded or run. Only load checkpoints from a source you trust",
                "data.pkl",
            )
        if module == "collections":
            return collections.OrderedDict
        if module == "torch":
            return _StorageType(name, STORAGE_DTYPES[name])
        return self._rebuild_tensor

    def persistent_load(self, saved_id: Any) -> StorageRef:
        # torch writes ('storage', storage_type, key, location, numel).
        if not (isinstance(saved_id, tuple) and len(saved_id) == 5 and saved_id[0] == "storage"):
            raise CheckpointError(self.path, f"unsupported persistent id {saved_id!r}", "data.pkl")
        _, storage_type, key, _location, numel = saved_id
        if not isinstance(storage_type, _StorageType) or not isinstance(numel, int):
            raise CheckpointError(self.path, f"malformed storage reference {saved_id!r}", "data.pkl")
        return StorageRef(str(key), storage_type.dtype, numel)

    def _rebuild_tensor(self, storage: Any, offset: Any, shape: Any, stride: Any, *_ignored: Any) -> TensorRef:
        """Stand-in for torch._utils._rebuild_tensor(_v2); requires_grad, hooks and metadata are dropped."""
        valid = (
            isinstance(storage, StorageRef)
            and isinstance(offset, int)
            and isinstance(shape, tuple)
            and isinstance(stride, tuple)
            and len(shape) == len(stride)
            and all(isinstance(n, int) and n >= 0 for n in shape + stride)
        )
        if not valid:
            raise CheckpointError(self.path, "malformed tensor record in the pickle", "data.pkl")
        return TensorRef(storage, offset, tuple(shape), tuple(stride))


class TorchArchive:
    """An open `torch.save` zip file: its state dict as TensorRefs plus lazy tensor access.

    `state_dict` maps names to TensorRefs and `load(ref)` returns the tensor as a NumPy
    array view of the memory-mapped file (a copy only when the tensor is not contiguous).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(self.path, "file not found")
        self._file_size = self.path.stat().st_size
        try:
            with zipfile.ZipFile(self.path) as archive:
                self._entries = {info.filename: info for info in archive.infolist()}
                self._prefix = self._find_prefix()
                pickle_bytes = self._read_entry(archive, f"{self._prefix}data.pkl")
                byteorder_name = f"{self._prefix}byteorder"
                byteorder = (
                    self._read_entry(archive, byteorder_name).decode("ascii", "replace")
                    if byteorder_name in self._entries
                    else "little"
                )
        except zipfile.BadZipFile as exc:
            raise CheckpointError(
                self.path,
                f"not a readable zip archive ({exc}); the file is truncated, or it was saved in torch's legacy "
                "non-zip format, so re-save it with torch.save from PyTorch >= 1.6",
            ) from None
        # zipfile raises NotImplementedError for unknown versions or compression methods,
        # RuntimeError for encrypted entries, zlib.error for corrupt deflate data and
        # ValueError (UnicodeDecodeError) for a name flagged UTF-8 that is not.
        except (OSError, EOFError, zipfile.LargeZipFile, NotImplementedError, RuntimeError, ValueError, zlib.error) as exc:
            raise CheckpointError(self.path, f"cannot read the zip archive: {exc}") from None
        if byteorder != "little":
            raise CheckpointError(self.path, f"storages are {byteorder}-endian, but only little-endian is supported", "byteorder")

        self._memmap = np.memmap(self.path, dtype=np.uint8, mode="r") if self._file_size else None
        self.state_dict = self._unpickle(pickle_bytes)

    def _find_prefix(self) -> str:
        pickles = [name for name in self._entries if name.endswith("data.pkl") and name.count("/") == 1]
        if not pickles:
            raise CheckpointError(self.path, "no <name>/data.pkl entry, so this is not a torch.save archive", "data.pkl")
        return pickles[0][: -len("data.pkl")]

    def _read_entry(self, archive: zipfile.ZipFile, name: str) -> bytes:
        # A stored entry cannot be larger than the archive, and a compressed one that claims
        # to be is a zip bomb, so the check bounds what decompression can allocate.
        size = self._entries[name].file_size
        if size > self._file_size:
            raise CheckpointError(
                self.path, f"zip entry claims {size} bytes, more than the {self._file_size}-byte archive", name
            )
        return archive.read(name)

    def _check_opcodes(self, pickle_bytes: bytes) -> None:
        """Parse the pickle's opcodes without running them, rejecting length fields that overrun the data.

        The C unpickler allocates a BINBYTES8 or BYTEARRAY8 buffer of the declared length
        before reading it, so a 13-byte pickle can request 1 TiB. pickletools reads from a
        BytesIO, which returns only the bytes present.
        """
        try:
            for _ in pickletools.genops(pickle_bytes):
                pass
        except ValueError as exc:
            raise CheckpointError(self.path, f"malformed pickle ({exc})", "data.pkl") from None

    def _unpickle(self, pickle_bytes: bytes) -> dict[str, TensorRef]:
        self._check_opcodes(pickle_bytes)
        try:
            state = SafeTorchUnpickler(io.BytesIO(pickle_bytes), self.path).load()
        except CheckpointError:
            raise
        except (
            pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, RecursionError
        ) as exc:
            raise CheckpointError(self.path, f"malformed pickle ({type(exc).__name__}: {exc})", "data.pkl") from None
        if not isinstance(state, dict):
            raise CheckpointError(self.path, f"the pickle contains a {type(state).__name__}, expected a state dict", "data.pkl")
        for name, value in state.items():
            if not isinstance(value, TensorRef):
                raise CheckpointError(self.path, f"state dict value is a {type(value).__name__}, not a tensor", str(name))
        return dict(state)

    def _storage_array(self, storage: StorageRef) -> np.ndarray:
        """Return the storage as a flat array viewing the memory map."""
        entry = f"{self._prefix}data/{storage.key}"
        info = self._entries.get(entry)
        if info is None:
            raise CheckpointError(self.path, "storage entry is missing from the archive", entry)
        if info.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(self.path, "storage entry is compressed; torch.save writes it uncompressed", entry)
        nbytes = storage.numel * storage.dtype.itemsize
        if info.file_size != nbytes:
            raise CheckpointError(
                self.path, f"storage entry has {info.file_size} bytes, the pickle implies {nbytes}", entry
            )
        start = self._data_offset(info)
        if start + nbytes > self._file_size:
            raise CheckpointError(self.path, "storage data runs past the end of the file, so the file is truncated", entry)
        return self._memmap[start : start + nbytes].view(storage.dtype)

    def _data_offset(self, info: zipfile.ZipInfo) -> int:
        # The central directory does not record where the data starts: the local header
        # has its own name and extra-field lengths, which torch uses for alignment padding.
        header = bytes(self._memmap[info.header_offset : info.header_offset + _LOCAL_HEADER.size])
        if len(header) < _LOCAL_HEADER.size:
            raise CheckpointError(self.path, "local zip header runs past the end of the file", info.filename)
        signature, name_length, extra_length = _LOCAL_HEADER.unpack(header)
        if signature != _LOCAL_HEADER_SIGNATURE:
            raise CheckpointError(self.path, "corrupt local zip header", info.filename)
        return info.header_offset + _LOCAL_HEADER.size + name_length + extra_length

    def load(self, ref: TensorRef) -> np.ndarray:
        """Return the tensor `ref` in its stored dtype, viewing the file when it is contiguous."""
        flat = self._storage_array(ref.storage)
        if not ref.shape or 0 in ref.shape:
            extent = 1 if not ref.shape else 0
        else:
            extent = 1 + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride))
        if ref.offset < 0 or ref.offset + extent > flat.size:
            raise CheckpointError(self.path, "tensor view runs past the end of its storage", f"data/{ref.storage.key}")
        itemsize = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[ref.offset :],
            shape=ref.shape,
            strides=tuple(s * itemsize for s in ref.stride),
            writeable=False,
        )
        return view if view.flags.c_contiguous else np.ascontiguousarray(view)
