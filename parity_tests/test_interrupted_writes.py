"""Interrupted writes leave nothing half-written, and llama-convert keeps an existing output without --force.

Failures are injected into the real writers with monkeypatch: gguf's writer raising after
its first tensor or after writing the header, safetensors' save_file writing a few bytes
and then failing as a full disk does, and a KeyboardInterrupt. After each, the output
folder must hold exactly what it held before: no output and no temporary file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from parity_tests.malformed import write_base_gguf
from weights_tools import convert
from weights_tools.errors import CheckpointError
from weights_tools.loader import load_checkpoint


def folder_listing(folder: Path) -> set[str]:
    """Return every path under folder (hidden temporary files included), relative to it."""
    return {os.fspath(path.relative_to(folder)) for path in folder.rglob("*")}


@pytest.fixture
def source(tmp_path) -> Path:
    folder = tmp_path / "source"
    folder.mkdir()
    return write_base_gguf(folder)


@pytest.fixture
def out(tmp_path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def disk_full_save_file(tensors, filename, metadata=None):
    """Stand-in for safetensors.numpy.save_file that writes a few bytes, then fails like a full disk."""
    Path(filename).write_bytes(b"\x08\x00\x00\x00partial")
    raise OSError(28, "No space left on device")


def raise_after_first_tensor(monkeypatch, exception: BaseException) -> None:
    """Make gguf's writer raise on its second add_tensor call."""
    import gguf

    original = gguf.GGUFWriter.add_tensor
    calls = []

    def add_tensor(self, *args, **kwargs):
        calls.append(args[0])
        if len(calls) > 1:
            raise exception
        return original(self, *args, **kwargs)

    monkeypatch.setattr(gguf.GGUFWriter, "add_tensor", add_tensor)


def raise_after_header(monkeypatch) -> None:
    """Make gguf's writer fail after the header and key/values are already in the file."""
    import gguf

    def write_tensors_to_file(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", write_tensors_to_file)


@pytest.mark.parametrize("target", ["safetensors", "hf"])
def test_convert_disk_full_leaves_nothing(monkeypatch, source, out, target):
    import safetensors.numpy

    monkeypatch.setattr(safetensors.numpy, "save_file", disk_full_save_file)
    before = folder_listing(out)

    with pytest.raises(CheckpointError) as raised:
        convert.convert(source, out / "converted", target, progress=False)

    assert "No space left on device" in str(raised.value)
    assert folder_listing(out) == before


def test_convert_gguf_failure_after_header(monkeypatch, source, out):
    raise_after_header(monkeypatch)
    before = folder_listing(out)

    with pytest.raises(CheckpointError):
        convert.convert(source, out / "converted.gguf", "gguf", progress=False)

    assert folder_listing(out) == before


@pytest.mark.parametrize("exception", [RuntimeError("injected failure"), KeyboardInterrupt()], ids=["error", "ctrl-c"])
def test_convert_gguf_interrupted_mid_tensors(monkeypatch, source, out, exception):
    raise_after_first_tensor(monkeypatch, exception)
    before = folder_listing(out)

    with pytest.raises(type(exception)):
        convert.convert(source, out / "converted.gguf", "gguf", progress=False)

    assert folder_listing(out) == before


@pytest.mark.parametrize("target, name", [("gguf", "model.gguf"), ("safetensors", "model"), ("hf", "model")])
def test_convert_keeps_existing_output(capsys, source, out, target, name):
    destination = out / name
    if target == "gguf":
        destination.write_bytes(b"keep me")
    else:
        destination.mkdir()
        (destination / "keep.txt").write_text("keep me")
    before = folder_listing(out)

    status = convert.main([str(source), str(destination), "--to", target, "--quiet"])

    lines = capsys.readouterr().err.splitlines()
    assert status != 0
    assert len(lines) == 1
    assert lines[0].startswith("error: ")
    assert "--force" in lines[0]
    assert folder_listing(out) == before
    kept = destination if target == "gguf" else destination / "keep.txt"
    assert kept.read_bytes() == b"keep me"


def test_convert_force_replaces_output(source, out):
    destination = out / "model.gguf"
    destination.write_bytes(b"GGUF old")

    status = convert.main([str(source), str(destination), "--to", "gguf", "--force", "--quiet"])

    assert status == 0
    assert folder_listing(out) == {"model.gguf"}
    original = load_checkpoint(source)
    converted = load_checkpoint(destination)
    np.testing.assert_array_equal(converted["layers.1.attention.wq.weight"], original["layers.1.attention.wq.weight"])


def test_failed_force_keeps_old_output(monkeypatch, source, out):
    raise_after_header(monkeypatch)
    destination = out / "model.gguf"
    destination.write_bytes(b"GGUF old")

    with pytest.raises(CheckpointError):
        convert.convert(source, destination, "gguf", force=True, progress=False)

    assert folder_listing(out) == {"model.gguf"}
    assert destination.read_bytes() == b"GGUF old"


def _tiny_dump(path_name: str = "numpy"):
    from weights_tools.trace_format import TraceDump

    activations = {"embed": np.ones((1, 2, 4), np.float32), "logits": np.zeros((1, 2, 8), np.float32)}
    return TraceDump(activations, path_name, "test", "tiny", "float32", [1, 2])


def test_dump_write_failure_leaves_old_dump(monkeypatch, out):
    from weights_tools.trace_format import read_dump, write_dump

    path = write_dump(_tiny_dump("first"), out / "dump.safetensors")

    def failing_fsync(descriptor):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        write_dump(_tiny_dump("second"), path)

    assert folder_listing(out) == {"dump.safetensors"}
    assert read_dump(path).implementation == "first"


def test_dump_interrupted_leaves_nothing(monkeypatch, out):
    from weights_tools.trace_format import write_dump

    def interrupted_fsync(descriptor):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted_fsync)
    with pytest.raises(KeyboardInterrupt):
        write_dump(_tiny_dump(), out / "dump.safetensors")

    assert folder_listing(out) == set()


def test_report_write_failure_leaves_old_report(monkeypatch, out):
    from parity_tests.diff_report import write_atomic

    path = write_atomic(out / "report.html", b"old report")

    def failing_replace(source, destination):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        write_atomic(path, b"new report")

    assert folder_listing(out) == {"report.html"}
    assert path.read_bytes() == b"old report"
