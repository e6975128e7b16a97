"""Property tests: mutated bytes of valid files never crash a reader or make it allocate much.

Each example takes a valid tiny file (see parity_tests.malformed), applies one to four
mutations (bit flips, truncations, insertions, deletions, and 4- or 8-byte length fields
overwritten with sizes such as 2**31, 2**40 and 2**64 - 1) and opens the result the way
the command-line tools do. A load may succeed, in which case every tensor is converted.
Any exception must be a LlamaParityError, and the tracemalloc peak of the load must stay
within memory_bound(file size). Offsets are drawn near the start and end of the file,
where headers, pickles and zip directories are, as well as anywhere in it.
"""

from __future__ import annotations

import shutil
import tempfile
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from parity_tests.malformed import (
    memory_bound,
    open_input,
    safetensors_header,
    write_base_dump,
    write_base_gguf,
    write_base_hf,
    write_base_llama2c,
    write_base_meta,
    write_base_sentencepiece,
    write_base_tokenizer_json,
)
from weights_tools.errors import LlamaParityError

SIZES = (0, 1, 255, 2**16, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**40, 2**50, 2**63 - 1, 2**63, 2**64 - 1)


@dataclass(frozen=True)
class FuzzTarget:
    """A valid input to mutate: the path opened, the file inside it that is mutated, and the byte ranges to favour."""

    kind: str
    root: Path
    mutated_file: Path
    head: int  # bytes at the start that hold structure (headers, metadata)
    tail: int  # bytes at the end that hold structure (zip central directory)


def mutation(head: int, tail: int):
    """Strategy for one (operation, offset, argument) mutation; negative offsets count from the end."""
    offset = st.one_of(st.integers(0, max(head, 1)), st.integers(-max(tail, 1), -1), st.integers(0, 2**24))
    width_and_value = st.tuples(st.sampled_from([4, 8]), st.one_of(st.sampled_from(SIZES), st.integers(0, 2**64 - 1)))
    return st.one_of(
        st.tuples(st.just("flip"), offset, st.integers(0, 7)),
        st.tuples(st.just("truncate"), offset, st.just(None)),
        st.tuples(st.just("insert"), offset, st.binary(min_size=1, max_size=16)),
        st.tuples(st.just("delete"), offset, st.integers(1, 64)),
        st.tuples(st.just("length"), offset, width_and_value),
    )


def apply_mutations(data: bytes, mutations: list[tuple]) -> bytes:
    """Apply mutations in order; offsets wrap around the current length."""
    buffer = bytearray(data)
    for operation, offset, argument in mutations:
        size = len(buffer)
        position = (size + offset if offset < 0 else offset) % (size + 1)
        if operation == "flip" and position < size:
            buffer[position] ^= 1 << argument
        elif operation == "truncate":
            del buffer[position:]
        elif operation == "insert":
            buffer[position:position] = argument
        elif operation == "delete":
            del buffer[position : position + argument]
        elif operation == "length":
            width, value = argument
            if position + width <= size:
                buffer[position : position + width] = (value % 2 ** (8 * width)).to_bytes(width, "little")
    return bytes(buffer)


def _safetensors_head(path: Path) -> int:
    return 8 + safetensors_header(path)[0]


def _build_targets(folder: Path) -> dict[str, FuzzTarget]:
    targets = {}

    gguf = write_base_gguf(_subfolder(folder, "gguf"))
    # A tiny GGUF's key/values and tensor table fit in its first 3 KiB.
    targets["gguf"] = FuzzTarget("checkpoint", gguf, gguf, 3072, 32)

    for version, head in ((0, 28), (1, 256)):
        path = write_base_llama2c(_subfolder(folder, f"llama2c-v{version}"), version)
        targets[f"llama2c-v{version}"] = FuzzTarget("checkpoint", path, path, head, 16)

    meta = write_base_meta(_subfolder(folder, "meta"))
    # The pickle and local headers come first, the central directory last.
    targets["meta-pth"] = FuzzTarget("checkpoint", meta, meta / "consolidated.00.pth", 4096, 3072)
    targets["meta-params"] = FuzzTarget("checkpoint", meta, meta / "params.json", 256, 64)

    hf = write_base_hf(_subfolder(folder, "hf"))
    weights = hf / "model.safetensors"
    targets["hf-safetensors"] = FuzzTarget("checkpoint", hf, weights, _safetensors_head(weights), 16)
    targets["hf-config"] = FuzzTarget("checkpoint", hf, hf / "config.json", 1024, 64)

    spm = write_base_sentencepiece(_subfolder(folder, "sentencepiece"))
    targets["sentencepiece"] = FuzzTarget("tokenizer", spm, spm, 512, 64)
    tokenizer_json = write_base_tokenizer_json(_subfolder(folder, "tokenizer-json"))
    targets["tokenizer-json"] = FuzzTarget("tokenizer", tokenizer_json, tokenizer_json, 2048, 64)

    dump = write_base_dump(_subfolder(folder, "dump"))
    targets["dump"] = FuzzTarget("dump", dump, dump, _safetensors_head(dump), 16)
    return targets


def _subfolder(folder: Path, name: str) -> Path:
    path = folder / name
    path.mkdir()
    return path


@pytest.fixture(scope="module")
def targets(tmp_path_factory):
    return _build_targets(tmp_path_factory.mktemp("fuzz-base"))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz-run")


def open_mutated(target: FuzzTarget, data: bytes, scratch: Path) -> None:
    """Copy the target to a fresh folder, replace the mutated file with data and open it."""
    run_folder = Path(tempfile.mkdtemp(dir=scratch))
    try:
        base_folder = target.root if target.root.is_dir() else target.root.parent
        copy = run_folder / "input"
        shutil.copytree(base_folder, copy)
        (copy / target.mutated_file.relative_to(base_folder)).write_bytes(data)
        root = copy if target.root.is_dir() else copy / target.root.name
        bound = memory_bound(root)

        tracemalloc.start()
        try:
            try:
                open_input(target.kind, root)
            except LlamaParityError:
                pass
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak <= bound, f"peak {peak} bytes above the bound {bound}"
    finally:
        shutil.rmtree(run_folder)


@pytest.mark.parametrize(
    "name",
    [
        "gguf",
        "llama2c-v0",
        "llama2c-v1",
        "meta-pth",
        "meta-params",
        "hf-safetensors",
        "hf-config",
        "sentencepiece",
        "tokenizer-json",
        "dump",
    ],
)
@given(data=st.data())
def test_mutated_input_fails_cleanly(targets, scratch, name, data):
    target = targets[name]
    original = target.mutated_file.read_bytes()
    mutations = data.draw(st.lists(mutation(target.head, target.tail), min_size=1, max_size=4), label="mutations")

    open_mutated(target, apply_mutations(original, mutations), scratch)


def test_mutations_change_the_file():
    """apply_mutations really edits bytes, so the property tests above exercise broken inputs."""
    data = bytes(range(32))

    assert apply_mutations(data, [("flip", 3, 0)])[3] == 2
    assert apply_mutations(data, [("truncate", 10, None)]) == data[:10]
    assert apply_mutations(data, [("insert", 0, b"xy")])[:3] == b"xy\x00"
    assert apply_mutations(data, [("delete", -2, 64)]) == data[:30]
    assert apply_mutations(data, [("length", 4, (8, 2**40))])[4:12] == (2**40).to_bytes(8, "little")
