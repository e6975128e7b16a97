"""The Hugging Face adapter: a tiny random LlamaForCausalLM dumped with hooks must match numpy_llama."""

from __future__ import annotations

import numpy as np
import pytest

from parity_tests import cli
from parity_tests.diff import compare_dumps

torch = pytest.importorskip("torch", reason="torch is not installed; install the convert-test extra")
transformers = pytest.importorskip("transformers", reason="transformers is not installed; install the convert-test extra")

PROMPT_IDS = [1, 17, 42, 5, 63, 8, 30]


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A 4-block GQA LlamaForCausalLM (4 query heads, 2 KV heads, head_dim 8) saved as safetensors."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
    )
    model = transformers.LlamaForCausalLM(config)
    # The default init (std 0.02) leaves attention nearly uniform; larger weights make
    # the RoPE layout and the head grouping matter in the output.
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim == 2:
                parameter.normal_(0.0, 0.2)
    folder = tmp_path_factory.mktemp("hf_tiny")
    model.save_pretrained(folder)
    return folder


def numpy_dump(folder):
    from numpy_llama.model import Llama
    from numpy_llama.trace import trace_forward
    from weights_tools.hf_reader import load_hf

    return trace_forward(Llama.from_checkpoint(load_hf(folder)), PROMPT_IDS, model_name=str(folder))


def test_hf_dump_matches_numpy(hf_folder, tmp_path, capsys):
    out = tmp_path / "hf.safetensors"
    assert cli.main(["dump-hf", "--hf-model", str(hf_folder), "--prompt-ids", ",".join(map(str, PROMPT_IDS)), "--out", str(out)]) == 0
    capsys.readouterr()

    from weights_tools.trace_format import read_dump, write_dump

    hf = read_dump(out)
    assert hf.implementation == "transformers"
    assert "interleaved" in hf.notes["layout"]
    reference = numpy_dump(hf_folder)
    assert hf.order == reference.order

    result = compare_dumps(reference, hf)
    assert result.passed, [(row.name, row.metrics) for row in result.rows if row.failed]

    numpy_path = write_dump(reference, tmp_path / "numpy.safetensors")
    code = cli.main(["diff", "--against", str(numpy_path), str(out)])
    output = capsys.readouterr().out
    assert code == 0, output
    assert "all 71 compared trace points pass" in output


def test_hf_rotate_half_rows_are_diagnosed(hf_folder):
    """Without the layout conversion, HF's q/k rows are the rotate-half permutation of numpy's."""
    from parity_tests.diff import interleaved_to_half

    reference = numpy_dump(hf_folder)
    from parity_tests.hf_dump import dump_hf_model

    hf = dump_hf_model(hf_folder, PROMPT_IDS)
    for name in ("layers.0.q", "layers.0.k"):
        hf.activations[name] = interleaved_to_half(hf.activations[name])
    result = compare_dumps(reference, hf)
    assert result.first_failure.name == "layers.0.q"
    assert any("rotate-half row permutation" in finding for finding in result.findings), result.findings


def test_hf_filter_and_layers(hf_folder):
    from parity_tests.hf_dump import dump_hf_model
    from weights_tools.trace_format import TraceSelection

    selection = TraceSelection.from_strings(["layers.*.q_rope,logits"], "1-2")
    hf = dump_hf_model(hf_folder, PROMPT_IDS, selection=selection)
    assert hf.order == ["layers.1.q_rope", "layers.2.q_rope", "logits"]
    assert hf.activations["layers.1.q_rope"].shape == (1, len(PROMPT_IDS), 4, 8)
    assert np.all(np.isfinite(hf.activations["logits"]))


def test_dump_hf_rejects_missing_folder(tmp_path, capsys):
    code = cli.main(["dump-hf", "--hf-model", str(tmp_path / "absent"), "--prompt-ids", "1,2", "--out", str(tmp_path / "x.safetensors")])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert "config.json is missing" in err
    assert not (tmp_path / "x.safetensors").exists()
