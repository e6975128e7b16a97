"""Every malformed input from parity_tests.malformed fails with one clear project error.

Each case must raise its LlamaParityError subclass naming the file and the problem. Its
tracemalloc peak must stay below memory_bound, so no declared size was believed. A sample
of cases must print exactly one `error: ...` line through the numpy-llama command line.
"""

from __future__ import annotations

import pickle
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from parity_tests.malformed import (
    CANARY,
    evil_pickle_cases,
    malformed_cases,
    memory_bound,
    open_input,
    write_base_dump,
    write_base_gguf,
    write_base_hf,
    write_base_llama2c,
    write_base_meta,
    write_base_sentencepiece,
)
from weights_tools.errors import CheckpointError, LlamaParityError

CASES = malformed_cases()
CASES_BY_NAME = {case.name: case for case in CASES}

# Cases also run through `numpy-llama info` or `numpy-llama tokenize`: one per reader.
CLI_SAMPLE = (
    "gguf-truncated-in-metadata",
    "gguf-array-length-huge",
    "gguf-nan-weight",
    "pth-pickle-length-huge",
    "pickle-os-system-reduce",
    "params-invalid-json",
    "safetensors-header-length-huge",
    "hf-index-missing-shard",
    "canonical-format-version",
    "llama2c-dim-huge",
    "checkpoint-not-found",
    "sentencepiece-truncated",
    "tokenizer-json-truncated",
)


@pytest.fixture(scope="module", autouse=True)
def imported_readers():
    """Import every reader's dependencies first, so their import cost does not count as a load's allocation."""
    import gguf.quants  # noqa: F401
    import safetensors.numpy  # noqa: F401
    import sentencepiece  # noqa: F401
    import tokenizers  # noqa: F401

    import weights_tools.canonical  # noqa: F401
    import weights_tools.gguf_reader  # noqa: F401
    import weights_tools.hf_reader  # noqa: F401
    import weights_tools.llama2c_reader  # noqa: F401
    import weights_tools.loader  # noqa: F401
    import weights_tools.meta_reader  # noqa: F401
    import weights_tools.tokenizer  # noqa: F401
    import weights_tools.trace_format  # noqa: F401


def test_malformed_case_count():
    assert len(CASES) >= 40


@pytest.mark.parametrize("builder", [write_base_gguf, write_base_meta, write_base_hf, write_base_llama2c])
def test_base_checkpoints_load(tmp_path, builder):
    """The unbroken files load, so every failure below comes from the one thing each case breaks."""
    folder = tmp_path / "base"
    folder.mkdir()
    open_input("checkpoint", builder(folder))


def test_base_tokenizer_and_dump_load(tmp_path):
    open_input("tokenizer", write_base_sentencepiece(tmp_path))
    open_input("dump", write_base_dump(tmp_path))


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_malformed_input_rejected(tmp_path, case):
    folder = tmp_path / "input"
    folder.mkdir()
    path = case.build(folder)
    bound = memory_bound(path)

    tracemalloc.start()
    try:
        with pytest.raises(LlamaParityError) as raised:
            open_input(case.kind, path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    message = str(raised.value)
    assert isinstance(raised.value, case.error), f"{type(raised.value).__name__}: {message}"
    assert str(path) in message
    for fragment in case.fragments:
        assert fragment in message.lower()
    assert "\n" not in message
    assert peak <= bound, f"peak {peak} bytes above the bound {bound}"


@pytest.mark.parametrize("name", CLI_SAMPLE)
def test_malformed_input_cli_error(tmp_path, capsys, name):
    from numpy_llama.cli import main

    case = CASES_BY_NAME[name]
    folder = tmp_path / "input"
    folder.mkdir()
    path = case.build(folder)
    if case.kind == "tokenizer":
        argv = ["tokenize", "--tokenizer", str(path), "hello"]
    else:
        argv = ["generate", "--model", str(path), "--prompt-ids", "1", "--ids", "-n", "1"]

    status = main(argv)

    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert status != 0
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: ")
    assert str(path) in lines[0]
    assert "Traceback" not in captured.err
    assert captured.out == ""


@pytest.mark.parametrize("name, factory, rejected", evil_pickle_cases(), ids=lambda value: value if isinstance(value, str) else "")
def test_pickle_global_never_runs(tmp_path, capsys, name, factory, rejected):
    from numpy_llama.cli import main

    folder = CASES_BY_NAME[name].build(tmp_path)
    canary = tmp_path / CANARY

    with pytest.raises(CheckpointError) as raised:
        open_input("checkpoint", folder)
    status = main(["generate", "--model", str(folder), "--prompt-ids", "1", "--ids", "-n", "1"])

    assert f"global {rejected}," in str(raised.value)
    assert raised.value.field == "data.pkl"
    assert status != 0
    assert f"global {rejected}," in capsys.readouterr().err
    assert not canary.exists()


def test_pickle_exploit_is_live(tmp_path):
    """Plain pickle.loads runs the payload, so the canary checks above can fail."""
    factory = dict((name, factory) for name, factory, _ in evil_pickle_cases())["pickle-eval-stack-global"]
    canary = tmp_path / CANARY

    pickle.loads(factory(canary))

    assert canary.exists()


def test_empty_prompt_without_bos(tmp_path, capsys):
    from numpy_llama.cli import main

    model = write_base_gguf(tmp_path)
    tokenizer = write_base_sentencepiece(tmp_path)

    status = main(["generate", "--model", str(model), "--tokenizer", str(tokenizer), "--no-bos", "-n", "1", ""])

    lines = capsys.readouterr().err.splitlines()
    assert status != 0
    assert len(lines) == 1
    assert lines[0].startswith("error: ")
    assert "prompt is empty" in lines[0]


@pytest.mark.parametrize(
    "argv_tail, fragment",
    [
        (["--prompt-ids", ",".join(["1"] * 65), "--ids", "-n", "1"], "context length is 64"),
        (["--prompt-ids", "1,2", "--ids", "-n", "63"], "at most 62 remain"),
        (["--prompt-ids", "1,x", "--ids"], "comma-separated integers"),
        (["--prompt-ids", "64", "--ids"], "outside the vocabulary"),
        (["--ids"], "no prompt"),
        (["--tokenizer", "TOKENIZER", "a \udcff b"], "not valid utf-8"),
        (["--tokenizer", "TOKENIZER", "a " * 80], "context length is 64"),
    ],
    ids=["prompt-ids-too-long", "n-too-large", "prompt-ids-not-integers", "prompt-id-out-of-vocabulary", "no-prompt", "non-utf8-prompt", "text-prompt-too-long"],
)
def test_generate_request_errors(tmp_path, capsys, argv_tail, fragment):
    from numpy_llama.cli import main

    model = write_base_gguf(tmp_path)
    tokenizer = write_base_sentencepiece(tmp_path)
    argv_tail = [str(tokenizer) if value == "TOKENIZER" else value for value in argv_tail]

    status = main(["generate", "--model", str(model), *argv_tail])

    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert status != 0
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: ")
    assert fragment in lines[0].lower()
    assert "Traceback" not in captured.err


def test_huge_context_length_allocates_lazily(tmp_path):
    """A GGUF claiming a 2**31 - 1 token context loads and runs without allocating for it."""
    from numpy_llama.generate import generate
    from numpy_llama.model import Llama
    from parity_tests.malformed import offset_after, patch
    from weights_tools.loader import load_checkpoint

    path = write_base_gguf(tmp_path)
    patch(path, offset_after(path, b"llama.context_length") + 4, "<I", 2**31 - 1)

    tracemalloc.start()
    try:
        checkpoint = load_checkpoint(path)
        model = Llama.from_checkpoint(checkpoint)
        tokens = list(generate(model, [1, 2, 3], 2))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert checkpoint.config.max_seq_len == 2**31 - 1
    assert len(tokens) == 2
    assert peak <= memory_bound(path)
    assert np.all(np.isfinite(model.forward(np.array([[1, 2]]))))
