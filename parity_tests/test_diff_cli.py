"""`llama-parity` input checks: output paths, file modes, --layers, --filter and tokenizer advice.

Every bad input must end in exit status 2 and one `error:` line on stderr, before any
implementation runs and without leaving an output file behind.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from numpy_llama.model import Llama
from numpy_llama.trace import trace_forward
from parity_tests import cli
from parity_tests.diff_report import write_atomic
from parity_tests.tiny_models import random_weights, tiny_config, write_gguf
from weights_tools.trace_format import write_dump, write_files_atomic

PROMPT_IDS = "1,5,9,33"
N_LAYERS = 2


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    """A folder with a 2-layer GGUF model (no tokenizer) and its numpy_llama dump."""
    folder = tmp_path_factory.mktemp("tiny_model")
    config = tiny_config(n_layers=N_LAYERS)
    weights = random_weights(config, seed=3)
    write_gguf(folder / "model.gguf", config, weights)
    ids = [int(token) for token in PROMPT_IDS.split(",")]
    write_dump(trace_forward(Llama(config, weights), ids, model_name="tiny"), folder / "ref.safetensors")
    return folder


@pytest.fixture
def model(model_folder) -> Path:
    return model_folder / "model.gguf"


@pytest.fixture
def reference_dump(model_folder) -> Path:
    return model_folder / "ref.safetensors"


@pytest.fixture
def no_run(monkeypatch):
    """Make any implementation run fail the test, to prove a check happens before the run."""
    from parity_tests import runners

    def fail_run(*args, **kwargs):
        raise AssertionError("an implementation ran although the input was invalid")

    monkeypatch.setattr(runners, "run_implementation", fail_run)


def files_under(folder: Path) -> set[Path]:
    return set(folder.rglob("*"))


def run_failing(argv: list, capsys) -> str:
    """Run llama-parity, assert exit status 2 and one `error:` line, and return that line."""
    code = cli.main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert code == 2, captured.err
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: "), captured.err
    return lines[0]


def diff_argv(model: Path, reference_dump: Path, *extra) -> list:
    """Return the argv of a numpy run diffed against the reference dump, which passes."""
    return ["diff", "--model", model, "--prompt-ids", PROMPT_IDS, "--impl", "numpy", "--against", reference_dump, *extra]


@pytest.mark.parametrize("flag", ["--report", "--plot", "--dump"])
def test_diff_output_in_missing_folder(flag, model, reference_dump, tmp_path, capsys, no_run):
    missing = tmp_path / "absent" / "out.file"
    outputs = {"--report": tmp_path / "r.html", "--plot": tmp_path / "p.png", "--dump": tmp_path / "d.safetensors"}
    outputs[flag] = missing
    argv = diff_argv(model, reference_dump, *(item for pair in outputs.items() for item in pair))

    line = run_failing(argv, capsys)

    assert flag in line
    assert str(missing) in line
    assert "does not exist" in line
    assert files_under(tmp_path) == set()


@pytest.mark.parametrize("flag", ["--report", "--plot", "--dump"])
def test_diff_output_that_is_folder(flag, model, reference_dump, tmp_path, capsys, no_run):
    line = run_failing(diff_argv(model, reference_dump, flag, tmp_path), capsys)

    assert f"{flag} {tmp_path} is a folder" in line
    assert files_under(tmp_path) == set()


def test_diff_dump_folder_with_two_runs(model, tmp_path, capsys, no_run):
    argv = ["diff", "--model", model, "--prompt-ids", PROMPT_IDS, "--impl", "numpy,numpy", "--dump", tmp_path]

    line = run_failing(argv, capsys)

    assert f"--dump {tmp_path} is a folder" in line
    assert files_under(tmp_path) == set()
    assert not tmp_path.with_name(f"{tmp_path.name}.numpy_llama.safetensors").exists()


def test_diff_report_dot_is_folder(model, reference_dump, tmp_path, capsys, no_run, monkeypatch):
    monkeypatch.chdir(tmp_path)

    line = run_failing(diff_argv(model, reference_dump, "--report", "."), capsys)

    assert "--report . is a folder" in line
    assert files_under(tmp_path) == set()


def test_dump_out_in_missing_folder(model, tmp_path, capsys, no_run):
    out = tmp_path / "absent" / "x.safetensors"

    line = run_failing(["dump", "--model", model, "--prompt-ids", PROMPT_IDS, "--out", out], capsys)

    assert f"--out {out}" in line
    assert "does not exist" in line
    assert files_under(tmp_path) == set()


def test_dump_out_is_folder(model, tmp_path, capsys, no_run):
    line = run_failing(["dump", "--model", model, "--prompt-ids", PROMPT_IDS, "--out", tmp_path], capsys)

    assert f"--out {tmp_path} is a folder" in line


def test_dump_hf_out_checked_before_loading(tmp_path, capsys):
    out = tmp_path / "absent" / "hf.safetensors"
    argv = ["dump-hf", "--hf-model", tmp_path / "no-model", "--prompt-ids", PROMPT_IDS, "--out", out]

    line = run_failing(argv, capsys)

    assert f"--out {out}" in line
    assert "does not exist" in line


def test_diff_outputs_must_differ(model, reference_dump, tmp_path, capsys, no_run):
    same = tmp_path / "same.out"
    line = run_failing(diff_argv(model, reference_dump, "--report", same, "--plot", same), capsys)
    assert "--report" in line
    assert "--plot" in line

    line = run_failing(["diff", "--model", model, "--prompt-ids", PROMPT_IDS, "--impl", "numpy",
                        "--against", reference_dump, "--dump", reference_dump], capsys)
    assert "--against" in line
    assert str(reference_dump) in line


def test_diff_write_failure_is_one_line(model, reference_dump, tmp_path, capsys, monkeypatch):
    def failing_fsync(descriptor):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    argv = diff_argv(model, reference_dump, "--dump", tmp_path / "d.safetensors", "--report", tmp_path / "r.html")

    line = run_failing(argv, capsys)

    assert "failed to write" in line
    assert "No space left on device" in line
    assert str(tmp_path) in line
    assert files_under(tmp_path) == set()


def test_failed_write_changes_no_target(tmp_path):
    first = tmp_path / "first.bin"
    first.write_bytes(b"old")
    unwritable = tmp_path / "absent" / "second.bin"

    with pytest.raises(OSError) as info:
        write_files_atomic([(first, b"new"), (unwritable, b"new")])

    assert info.value.filename == str(unwritable)
    assert first.read_bytes() == b"old"
    assert files_under(tmp_path) == {first}


def test_unexpected_error_exits_2(reference_dump, capsys, monkeypatch):
    from parity_tests import diff

    def broken_compare(*args, **kwargs):
        raise RuntimeError("planted bug")

    monkeypatch.setattr(diff, "compare_dumps", broken_compare)

    code = cli.main(["diff", "--against", str(reference_dump), str(reference_dump)])

    err = capsys.readouterr().err
    assert code == 2
    assert "RuntimeError: planted bug" in err
    assert err.splitlines()[-1].startswith("error: ")


def file_mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_outputs_get_umask_mode(umask, model, reference_dump, tmp_path, capsys):
    previous = os.umask(umask)
    try:
        code = cli.main([str(arg) for arg in diff_argv(
            model, reference_dump, "--dump", tmp_path / "d.safetensors", "--report", tmp_path / "r.html", "--plot", tmp_path / "p.png"
        )])
        direct = write_atomic(tmp_path / "direct.bin", b"data")
    finally:
        os.umask(previous)
    capsys.readouterr()

    assert code == 0
    written = sorted(path.name for path in tmp_path.iterdir())
    assert written == ["d.safetensors", "direct.bin", "p.png", "r.html"]
    for path in tmp_path.iterdir():
        assert file_mode(path) == 0o666 & ~umask, path.name
    assert file_mode(direct) == 0o666 & ~umask


@pytest.mark.parametrize(
    "argv",
    [
        ["diff", "--model", "{model}", "--prompt-ids", PROMPT_IDS, "--impl", "numpy,numpy", "--layers", "99"],
        ["diff", "--model", "{model}", "--prompt-ids", PROMPT_IDS, "--impl", "numpy,numpy", "--layers", "0-2"],
        ["dump", "--model", "{model}", "--prompt-ids", PROMPT_IDS, "--layers", "7", "--out", "{out}"],
        ["diff", "--against", "{ref}", "{ref}", "--layers", "5"],
    ],
)
def test_layers_beyond_model(argv, model, reference_dump, tmp_path, capsys, no_run):
    out = tmp_path / "x.safetensors"
    argv = [arg.format(model=model, ref=reference_dump, out=out) for arg in argv]

    line = run_failing(argv, capsys)

    assert "--layers" in line
    assert f"has {N_LAYERS} layers" in line
    assert f"0..{N_LAYERS - 1}" in line
    assert not out.exists()


def test_layers_missing_from_dumps_without_config(reference_dump, tmp_path, capsys):
    from weights_tools.trace_format import read_dump

    dump = read_dump(reference_dump)
    dump.config = None
    no_config = write_dump(dump, tmp_path / "no_config.safetensors")

    line = run_failing(["diff", "--against", no_config, no_config, "--layers", "3"], capsys)

    assert "--layers requests layer 3" in line
    assert f"record layers 0..{N_LAYERS - 1}" in line


def test_layers_in_range_still_pass(reference_dump, capsys):
    code = cli.main(["diff", "--against", str(reference_dump), str(reference_dump), "--layers", str(N_LAYERS - 1)])

    output = capsys.readouterr().out
    assert code == 0, output
    assert f"layers.{N_LAYERS - 1}.resid_post" in output


@pytest.mark.parametrize("pattern", ["", ",", " , ", "re:"])
def test_empty_filter_is_rejected(pattern, reference_dump, capsys):
    line = run_failing(["diff", "--against", reference_dump, reference_dump, "--filter", pattern], capsys)

    assert f"--filter {pattern!r} contains no pattern" in line
    assert "layers.*.q_rope" in line


def test_diff_no_tokenizer_names_own_flags(model, capsys, no_run):
    line = run_failing(["diff", "--model", model, "--prompt", "hi", "--impl", "numpy,numpy"], capsys)

    assert "has no tokenizer" in line
    assert "--prompt-ids 1,2,3" in line
    assert "--ids" not in line.replace("--prompt-ids", "")


def test_dump_hf_no_tokenizer_names_own_flags(tmp_path, capsys):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text("{}")

    line = run_failing(["dump-hf", "--hf-model", folder, "--prompt", "hello", "--out", tmp_path / "hf.safetensors"], capsys)

    assert "no tokenizer.json or tokenizer.model" in line
    assert "--prompt-ids 1,2,3" in line
    assert "--tokenizer" not in line
    assert not (tmp_path / "hf.safetensors").exists()


def test_dump_hf_layers_beyond_model(tmp_path, capsys):
    torch = pytest.importorskip("torch", reason="dump-hf needs torch")
    transformers = pytest.importorskip("transformers", reason="dump-hf needs transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
    )
    folder = tmp_path / "hf"
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    capsys.readouterr()
    out = tmp_path / "hf.safetensors"

    line = run_failing(["dump-hf", "--hf-model", folder, "--prompt-ids", "1,2", "--layers", "7", "--out", out], capsys)

    assert "--layers requests layer 7" in line
    assert "has 3 layers" in line
    assert "0..2" in line
    assert [path.name for path in tmp_path.iterdir()] == ["hf"]


@pytest.mark.parametrize("flag", ["--report", "--plot", "--dump"])
def test_diff_output_onto_model_rejected(flag, model, reference_dump, capsys, no_run):
    before = model.read_bytes()

    line = run_failing(diff_argv(model, reference_dump, flag, model), capsys)

    assert "would overwrite the checkpoint given with --model" in line
    assert model.read_bytes() == before


def test_dump_out_onto_model_rejected(model, capsys, no_run):
    before = model.read_bytes()

    line = run_failing(["dump", "--model", model, "--prompt-ids", PROMPT_IDS, "--out", model], capsys)

    assert "would overwrite the checkpoint" in line
    assert model.read_bytes() == before


def test_dump_hf_out_inside_model_folder_rejected(tmp_path, capsys):
    hf_folder = tmp_path / "hf"
    hf_folder.mkdir()
    (hf_folder / "config.json").write_text("{}")

    line = run_failing(
        ["dump-hf", "--hf-model", hf_folder, "--prompt-ids", "1", "--out", hf_folder / "model.safetensors"], capsys
    )

    assert "would overwrite the checkpoint given with --hf-model" in line


@pytest.mark.parametrize("layers", ["0-9999999999", "99999999999", ""])
def test_layers_huge_or_empty_rejected(layers, model, reference_dump, capsys, no_run):
    line = run_failing(diff_argv(model, reference_dump, "--layers", layers), capsys)

    assert "layer" in line


def test_dump_hf_model_file_instead_of_folder(tmp_path, capsys):
    hf_folder = tmp_path / "hf"
    hf_folder.mkdir()
    (hf_folder / "config.json").write_text("{}")

    line = run_failing(
        ["dump-hf", "--hf-model", hf_folder / "config.json", "--prompt-ids", "1", "--out", tmp_path / "d.safetensors"],
        capsys,
    )

    assert "is a file; pass the model's folder" in line


def test_dump_hf_prompt_ids_checked_before_loading(tmp_path, capsys, monkeypatch):
    from parity_tests import hf_dump

    def fail_load(*args, **kwargs):
        raise AssertionError("the weights loaded although the prompt ids were invalid")

    monkeypatch.setattr(hf_dump, "load_hf_model", fail_load)
    hf_folder = tmp_path / "hf"
    hf_folder.mkdir()
    (hf_folder / "config.json").write_text('{"num_hidden_layers": 2, "vocab_size": 512}')

    line = run_failing(
        ["dump-hf", "--hf-model", hf_folder, "--prompt-ids", "1,600", "--out", tmp_path / "d.safetensors"], capsys
    )

    assert "prompt ids must lie in 0 .. 511" in line
