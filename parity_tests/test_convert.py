"""llama-convert: round trips between formats, atomic output and the command line."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from numpy_llama.model import Llama
from parity_tests.checkpoint_writers import hf_logits, meta_params, random_hf_model, save_meta
from parity_tests.tiny_models import random_checkpoint, random_weights, tiny_config, write_gguf
from weights_tools.convert import convert, main
from weights_tools.errors import CheckpointError
from weights_tools.loader import detect_format, load_checkpoint

TOKENS = np.array([[1, 9, 4, 4, 27, 63, 0, 12, 31, 8, 2, 40, 55, 3]])
META_MULTIPLE_OF = 16
META_HIDDEN_DIM = 96  # Meta's rule for dim 32 and multiple_of 16
TARGET_FORMATS = {"safetensors": "canonical", "gguf": "gguf", "hf": "hf"}


def _destination(tmp_path, to):
    return tmp_path / ("model.gguf" if to == "gguf" else f"model-{to}")


def _logits(path_or_checkpoint):
    checkpoint = path_or_checkpoint
    if not hasattr(checkpoint, "config"):
        checkpoint = load_checkpoint(checkpoint)
    return Llama.from_checkpoint(checkpoint).forward(TOKENS)


@pytest.fixture
def meta_folder(tmp_path):
    pytest.importorskip("torch", reason="torch produces the .pth test files")
    config = tiny_config(hidden_dim=META_HIDDEN_DIM)
    return save_meta(tmp_path / "meta", random_weights(config, seed=5), meta_params(config, META_MULTIPLE_OF), n_shards=2)


def test_meta_hf_meta_is_identity(meta_folder, tmp_path):
    meta = load_checkpoint(meta_folder)
    hf_folder = convert(meta_folder, tmp_path / "hf", "hf", progress=False)
    back = load_checkpoint(hf_folder)

    assert back.format == "hf"
    assert back.config == meta.config
    for name in meta:
        np.testing.assert_array_equal(back[name], meta[name], err_msg=name)


@pytest.mark.parametrize("to", sorted(TARGET_FORMATS))
def test_convert_keeps_logits_meta(meta_folder, tmp_path, to):
    expected = _logits(meta_folder)
    destination = convert(meta_folder, _destination(tmp_path, to), to, progress=False)

    assert detect_format(destination) == TARGET_FORMATS[to]
    np.testing.assert_array_equal(_logits(destination), expected)


@pytest.mark.parametrize("to", sorted(TARGET_FORMATS))
def test_convert_keeps_logits_tied_gguf(tmp_path, to):
    config = tiny_config(tie_embeddings=True)
    source = write_gguf(tmp_path / "source.gguf", config, random_weights(config, seed=6))
    expected = _logits(source)
    destination = convert(source, _destination(tmp_path, to), to, progress=False)

    converted = load_checkpoint(destination)
    assert converted.config.tie_embeddings
    np.testing.assert_array_equal(_logits(converted), expected)


def test_convert_keeps_logits_llama2c(data_dir, tmp_path):
    source = data_dir / "stories260K" / "stories260K.bin"
    expected = _logits(source)
    for to in sorted(TARGET_FORMATS):
        destination = convert(source, _destination(tmp_path, to), to, progress=False)
        np.testing.assert_array_equal(_logits(destination), expected, err_msg=to)


@pytest.mark.parametrize("rope_scaling", [False, True], ids=["plain-rope", "llama3-rope"])
def test_hf_output_runs_in_transformers(tmp_path, rope_scaling):
    pytest.importorskip("torch", reason="transformers needs torch")
    transformers = pytest.importorskip("transformers", reason="transformers checks the hf output")
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16}
    source_model = random_hf_model(tiny_config(rope_theta=500000.0), seed=7, rope_scaling=scaling if rope_scaling else None)
    source_model.save_pretrained(tmp_path / "source")

    # HF -> canonical -> HF, then transformers loads our output.
    canonical = convert(tmp_path / "source", tmp_path / "canonical", "safetensors", progress=False)
    output = convert(canonical, tmp_path / "hf", "hf", progress=False)
    reloaded = transformers.LlamaForCausalLM.from_pretrained(output).eval()

    np.testing.assert_allclose(hf_logits(reloaded, TOKENS), hf_logits(source_model, TOKENS), rtol=0, atol=1e-5)
    np.testing.assert_allclose(_logits(output), hf_logits(source_model, TOKENS), rtol=0, atol=1e-4)


def test_gguf_tokenizer_keys_copied(tmp_path):
    import gguf

    config = tiny_config()
    tokens = [f"<tok{i}>" for i in range(config.vocab_size)]
    source = write_gguf(tmp_path / "source.gguf", config, random_weights(config), tokens=tokens)
    destination = convert(source, tmp_path / "copy.gguf", "gguf", progress=False)

    fields = gguf.GGUFReader(destination).fields
    assert fields["tokenizer.ggml.model"].contents() == "llama"
    assert fields["tokenizer.ggml.tokens"].contents() == tokens
    assert fields["general.architecture"].contents() == "llama"
    assert fields["general.file_type"].contents() == int(gguf.LlamaFileType.ALL_F32)


def _canonical_source(tmp_path, config):
    from weights_tools.convert import write_canonical

    source = tmp_path / "source"
    source.mkdir()
    write_canonical(random_checkpoint(config, seed=8), source, progress=False)
    return source


def test_llama3_rope_gguf_round_trip(tmp_path):
    from weights_tools.config import RopeScaling

    # With original context 64, head_dim 8's wavelengths 6.3, 63, 628 and 6283 fall in the
    # kept (< 16), blended and divided (> 64) bands.
    scaling = RopeScaling(8.0, 1.0, 4.0, 64)
    source = _canonical_source(tmp_path, tiny_config(rope_scaling=scaling))
    destination = convert(source, tmp_path / "model.gguf", "gguf", progress=False)

    converted = load_checkpoint(destination)
    assert converted.config.rope_scaling == scaling
    np.testing.assert_array_equal(_logits(converted), _logits(source))


def test_unusual_rope_scaling_to_gguf_rejected(tmp_path):
    from weights_tools.config import RopeScaling

    source = _canonical_source(tmp_path, tiny_config(rope_scaling=RopeScaling(8.0, 2.0, 4.0, 16)))
    output_folder = tmp_path / "out"

    with pytest.raises(CheckpointError, match=r"\[rope_scaling\].*low_freq_factor 2.0.*convert to safetensors or hf"):
        convert(source, output_folder / "model.gguf", "gguf", progress=False)
    assert list(output_folder.iterdir()) == []


def _tiny_gguf(tmp_path):
    config = tiny_config()
    return write_gguf(tmp_path / "source.gguf", config, random_weights(config))


def _one_error_line(capsys) -> str:
    error = capsys.readouterr().err
    assert error.startswith("error: "), error
    assert error.count("\n") == 1, error
    return error


def test_existing_output_needs_force(tmp_path, capsys):
    source = _tiny_gguf(tmp_path)
    destination = tmp_path / "canonical"
    assert main([str(source), str(destination), "--to", "safetensors", "--quiet"]) == 0
    first = (destination / "model.safetensors").read_bytes()

    assert main([str(source), str(destination), "--to", "safetensors", "--quiet"]) == 2
    assert "pass --force to overwrite it" in _one_error_line(capsys)

    assert main([str(source), str(destination), "--to", "safetensors", "--quiet", "--force"]) == 0
    assert sorted(p.name for p in destination.iterdir()) == ["config.json", "model.safetensors"]
    assert (destination / "model.safetensors").read_bytes() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["canonical", "source.gguf"]


@pytest.mark.parametrize("to", ["safetensors", "hf"])
def test_force_keeps_folder_without_checkpoint(tmp_path, capsys, to):
    source = _tiny_gguf(tmp_path)
    destination = tmp_path / "precious"
    (destination / "sub").mkdir(parents=True)
    (destination / "notes.txt").write_text("keep me")

    assert main([str(source), str(destination), "--to", to, "--quiet", "--force"]) == 2
    assert "which llama-convert does not write" in _one_error_line(capsys)
    assert (destination / "notes.txt").read_text() == "keep me"
    assert (destination / "sub").is_dir()


@pytest.mark.parametrize(
    "files",
    [
        {"config.json": '{"name": "myapp"}', "main.py": "code"},
        {"params.json": "{}"},
        {"config.json": "{}"},
    ],
    ids=["project-with-config", "params-only", "config-only"],
)
def test_force_keeps_folder_of_other_files(tmp_path, capsys, files):
    source = _tiny_gguf(tmp_path)
    destination = tmp_path / "project"
    destination.mkdir()
    for name, text in files.items():
        (destination / name).write_text(text)

    assert main([str(source), str(destination), "--to", "hf", "--quiet", "--force"]) == 2
    assert "--force does not replace it" in _one_error_line(capsys)
    assert {p.name: p.read_text() for p in destination.iterdir()} == files


def test_force_keeps_output_with_extra_files(tmp_path, capsys):
    source = _tiny_gguf(tmp_path)
    destination = tmp_path / "out"
    assert main([str(source), str(destination), "--to", "hf", "--quiet"]) == 0
    (destination / "notes.txt").write_text("keep me")

    assert main([str(source), str(destination), "--to", "hf", "--quiet", "--force"]) == 2
    assert "'notes.txt'" in _one_error_line(capsys)
    assert (destination / "notes.txt").read_text() == "keep me"


def test_force_gguf_onto_other_file_rejected(tmp_path, capsys):
    source = _tiny_gguf(tmp_path)
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")

    assert main([str(source), str(notes), "--to", "gguf", "--quiet", "--force"]) == 2
    assert "not a GGUF file" in _one_error_line(capsys)
    assert notes.read_text() == "hello"


def test_destination_through_link_checked_as_written(tmp_path, capsys, monkeypatch):
    source = _tiny_gguf(tmp_path)
    work = tmp_path / "work"
    (work / "keep").mkdir(parents=True)
    (work / "precious.txt").write_text("keep me")
    (tmp_path / "elsewhere").mkdir()
    (work / "link").symlink_to(tmp_path / "elsewhere" / "nowhere" / "a")
    monkeypatch.chdir(work)

    # link/.. is work itself to a text-only path check, but the kernel resolves it to
    # elsewhere/nowhere, which is what is checked and written.
    assert main([str(source), "link/..", "--to", "hf", "--quiet", "--force"]) == 0
    assert (work / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in (tmp_path / "elsewhere" / "nowhere").iterdir()) == ["config.json", "model.safetensors"]


def test_parent_that_is_a_file_rejected(tmp_path, capsys):
    source = _tiny_gguf(tmp_path)
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")

    assert main([str(source), str(notes / "model.gguf"), "--to", "gguf", "--quiet"]) == 2
    assert "notes.txt is a file, not a folder" in _one_error_line(capsys)
    assert notes.read_text() == "hello"


def test_long_destination_name(tmp_path):
    source = _tiny_gguf(tmp_path)
    destination = tmp_path / ("m" * 245 + ".gguf")

    assert convert(source, destination, "gguf", progress=False) == destination
    assert load_checkpoint(destination).config == load_checkpoint(source).config


def test_force_gguf_onto_folder_rejected(tmp_path, capsys):
    source = _tiny_gguf(tmp_path)
    (tmp_path / "folder").mkdir()

    assert main([str(source), str(tmp_path / "folder"), "--to", "gguf", "--quiet", "--force"]) == 2
    assert "--to gguf writes a file" in _one_error_line(capsys)
    assert (tmp_path / "folder").is_dir()


@pytest.mark.parametrize("to", ["gguf", "safetensors"])
def test_destination_overlapping_source_rejected(tmp_path, capsys, to):
    source = _tiny_gguf(tmp_path)
    before = source.read_bytes()
    destination = source if to == "gguf" else tmp_path

    assert main([str(source), str(destination), "--to", to, "--quiet", "--force"]) == 2
    assert "overlaps the source checkpoint" in _one_error_line(capsys)
    assert source.read_bytes() == before


def test_destination_current_folder_rejected(tmp_path, capsys, monkeypatch):
    source = _tiny_gguf(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)

    for destination in (".", ".."):
        assert main([str(source), destination, "--to", "hf", "--quiet", "--force"]) == 2
        assert "current folder" in _one_error_line(capsys)
    assert list(work.iterdir()) == []


@pytest.mark.parametrize("to", ["safetensors", "hf", "gguf"])
def test_output_gets_usual_modes(tmp_path, to):
    source = _tiny_gguf(tmp_path)
    old_umask = os.umask(0o022)
    try:
        destination = convert(source, _destination(tmp_path, to), to, progress=False)
    finally:
        os.umask(old_umask)

    entries = [destination, *destination.rglob("*")] if destination.is_dir() else [destination]
    for entry in entries:
        expected = 0o755 if entry.is_dir() else 0o644
        assert stat.S_IMODE(entry.stat().st_mode) == expected, entry


@pytest.mark.parametrize(
    "argv, message",
    [
        (["only-source"], "the following arguments are required"),
        (["a.gguf", "b", "--to", "onnx"], "invalid choice: 'onnx'"),
    ],
)
def test_usage_errors_are_one_line(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    error = _one_error_line(capsys)
    assert message in error
    assert "llama-convert --help" in error


def test_interrupt_leaves_nothing(tmp_path, capsys, monkeypatch):
    import weights_tools.convert as convert_module

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(convert_module, "write_hf", interrupted)
    source = _tiny_gguf(tmp_path)

    assert main([str(source), str(tmp_path / "out"), "--to", "hf", "--quiet"]) == 130
    assert _one_error_line(capsys) == "error: interrupted\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["source.gguf"]


def test_missing_source_one_line_error(tmp_path, capsys):
    assert main([str(tmp_path / "absent.gguf"), str(tmp_path / "out"), "--to", "hf"]) == 2
    error = capsys.readouterr().err
    assert error == f"error: {tmp_path / 'absent.gguf'}: file or folder not found; pass an existing checkpoint path\n"
    assert not (tmp_path / "out").exists()


def test_gguf_output_runs_in_llama_cpp(smollm2_path, tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python (the bench extra) is not installed")
    destination = convert(smollm2_path, tmp_path / "smollm2-f32.gguf", "gguf", progress=False)
    prompt_ids = [504, 3575, 282, 4649, 314]  # "The capital of France is"

    llm = llama_cpp.Llama(model_path=str(destination), n_ctx=64, verbose=False)
    llm.eval(prompt_ids)
    theirs = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),)).copy()
    ours = Llama.from_checkpoint(load_checkpoint(smollm2_path)).forward(np.array([prompt_ids]))[0, -1]

    assert int(np.argmax(theirs)) == int(np.argmax(ours)) == 7042
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-3 * np.abs(ours).max())
