"""Trace point selection, the dump format, the diff metrics and reports, and `llama-parity diff` on SmolLM2."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest

from numpy_llama.model import Llama
from numpy_llama.trace import trace_forward
from parity_tests import cli
from parity_tests.diff import (
    compare_dumps,
    compute_metrics,
    half_to_interleaved,
    interleaved_to_half,
    tolerance_for,
)
from parity_tests.diff_report import format_table, render_html, render_plot_png
from parity_tests.tiny_models import random_weights, tiny_config
from weights_tools.errors import CheckpointError, LlamaParityError
from weights_tools.trace_format import (
    LAYER_KINDS,
    Recorder,
    TraceDump,
    TraceError,
    TraceSelection,
    parse_layers,
    read_dump,
    split_name,
    trace_point_names,
    write_dump,
)

PROMPT_IDS = [1, 5, 9, 33, 2, 60]
SMOLLM2_PROMPT_IDS = "1,504,3458,282,4649,314"


@pytest.fixture(scope="module")
def tiny():
    config = tiny_config(n_layers=3)
    return Llama(config, random_weights(config, seed=1))


def test_layer_list_parsing():
    assert parse_layers("0-3,10") == {0, 1, 2, 3, 10}
    assert parse_layers(" 5 ") == {5}
    for bad in ("3-1", "a", "1-", ",", "-2"):
        with pytest.raises(TraceError):
            parse_layers(bad)


def test_selection_globs_regex_and_layers():
    names = trace_point_names(4)
    glob = TraceSelection.from_strings(["layers.*.q_rope"])
    assert [n for n in names if glob.selects(n)] == [f"layers.{i}.q_rope" for i in range(4)]

    regex = TraceSelection.from_strings([r"re:\.(q|k)$"], "1,3")
    assert [n for n in names if regex.selects(n)] == ["layers.1.q", "layers.1.k", "layers.3.q", "layers.3.k"]

    layers_only = TraceSelection.from_strings(None, "2")
    selected = [n for n in names if layers_only.selects(n)]
    assert selected == ["embed"] + [f"layers.2.{kind}" for kind in LAYER_KINDS] + ["final_norm", "logits"]

    with pytest.raises(TraceError, match="invalid regular expression"):
        TraceSelection.from_strings(["re:("])


def test_vocabulary_round_trip():
    for name in trace_point_names(2):
        layer, kind = split_name(name)
        assert (f"layers.{layer}.{kind}" if layer is not None else kind) == name
    with pytest.raises(TraceError):
        split_name("layers.0.qq")


def test_trace_points_match_numpy_forward(tiny):
    recorder = Recorder()
    tiny.forward(np.array([PROMPT_IDS]), tracer=recorder)
    assert recorder.order == trace_point_names(tiny.config.n_layers)
    seq, heads, kv_heads, hd = len(PROMPT_IDS), 4, 2, 8
    assert recorder.activations["layers.0.q"].shape == (1, seq, heads, hd)
    assert recorder.activations["layers.0.k_rope"].shape == (1, seq, kv_heads, hd)
    assert recorder.activations["layers.0.attn_scores"].shape == (1, heads, seq, seq)
    assert recorder.activations["layers.0.attn_heads"].shape == (1, seq, heads * hd)
    assert recorder.activations["logits"].shape == (1, seq, tiny.config.vocab_size)
    assert all(array.dtype == np.float32 for array in recorder.activations.values())


def test_tracing_leaves_logits_unchanged(tiny):
    plain = tiny.forward(np.array([PROMPT_IDS]))
    recorder = Recorder(TraceSelection.from_strings(["layers.1.*"]))
    traced = tiny.forward(np.array([PROMPT_IDS]), tracer=recorder)
    np.testing.assert_array_equal(plain, traced)
    assert recorder.order == [f"layers.1.{kind}" for kind in LAYER_KINDS]
    np.testing.assert_array_equal(recorder.activations["layers.1.resid_post"].shape, (1, 6, 32))


def test_recorder_copies_and_rejects_repeats():
    recorder = Recorder()
    array = np.ones(3, dtype=np.float16)
    recorder("embed", array)
    array[:] = 5
    assert recorder.activations["embed"].dtype == np.float32
    np.testing.assert_array_equal(recorder.activations["embed"], np.ones(3))
    with pytest.raises(TraceError, match="recorded twice"):
        recorder("embed", array)


def test_dump_round_trip(tiny, tmp_path):
    dump = trace_forward(tiny, PROMPT_IDS, model_name="tiny")
    path = write_dump(dump, tmp_path / "tiny.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.safetensors"]

    loaded = read_dump(path)
    assert loaded.order == dump.order
    assert loaded.prompt_ids == PROMPT_IDS
    assert loaded.implementation == "numpy_llama"
    assert loaded.dtype == "float32"
    assert loaded.config == tiny.config.to_dict()
    for name in dump.order:
        np.testing.assert_array_equal(loaded.activations[name], dump.activations[name])


def rewrite_metadata(path, out, change):
    """Copy a dump, editing its safetensors metadata with change(dict)."""
    from safetensors.numpy import load_file, save_file
    from safetensors import safe_open

    with safe_open(path, framework="numpy") as handle:
        metadata = dict(handle.metadata())
    change(metadata)
    save_file(load_file(path), out, metadata=metadata)
    return out


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda m: m.update(format="something-else"), "format"),
        (lambda m: m.update(format_version="9"), "format_version"),
        (lambda m: m.update(dtype="int8"), "dtype"),
        (lambda m: m.update(prompt_ids="[1, "), "prompt_ids"),
        (lambda m: m.update(trace_order=json.dumps(["embed"])), "trace_order"),
        (lambda m: m.pop("model"), "model"),
    ],
)
def test_read_dump_rejects_bad_metadata(tiny, tmp_path, change, field):
    path = write_dump(trace_forward(tiny, PROMPT_IDS), tmp_path / "good.safetensors")
    bad = rewrite_metadata(path, tmp_path / "bad.safetensors", change)
    with pytest.raises(CheckpointError) as info:
        read_dump(bad)
    assert info.value.field == field
    assert "bad.safetensors" in str(info.value)


def test_read_dump_rejects_garbage_and_missing(tmp_path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        read_dump(garbage)
    with pytest.raises(CheckpointError, match="not found"):
        read_dump(tmp_path / "absent.safetensors")


def test_write_dump_failure_leaves_no_file(tiny, tmp_path):
    dump = trace_forward(tiny, PROMPT_IDS)
    dump.dtype = "int8"
    with pytest.raises(TraceError):
        write_dump(dump, tmp_path / "x.safetensors")
    empty = TraceDump({}, "numpy_llama", "0", "m", "float32", [1])
    with pytest.raises(TraceError, match="no trace point"):
        write_dump(empty, tmp_path / "x.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_metrics_ignore_shared_mask_and_flag_nonfinite():
    reference = np.array([[1.0, -np.inf], [0.5, 2.0]], dtype=np.float32)
    same = compute_metrics(reference.copy(), reference)
    assert same.max_abs == 0
    assert same.cosine == pytest.approx(1.0)
    assert same.mismatched_nonfinite == 0

    candidate = reference.copy()
    candidate[1, 0] = np.nan
    assert compute_metrics(candidate, reference).mismatched_nonfinite == 1

    scaled = compute_metrics(reference * 1.01, reference)
    assert scaled.max_rel == pytest.approx(0.01, rel=1e-3)
    assert scaled.nmse == pytest.approx(1e-4, rel=1e-2)


def test_config_difference_reported_first():
    config = tiny_config(n_layers=2)
    weights = random_weights(config, seed=1)
    reference = trace_forward(Llama(config, weights), PROMPT_IDS)
    candidate = trace_forward(Llama(config.replace(rope_theta=500000.0), weights), PROMPT_IDS)

    result = compare_dumps(reference, candidate)

    assert not result.passed
    assert result.findings[0].startswith("the two sources ran different model configs")
    assert "rope_theta 500000.0 vs 10000.0" in result.findings[0]


def test_tolerances_by_kind_and_dtype():
    assert tolerance_for("q", "float32").bound(10.0) == pytest.approx(1e-5 + 1e-4 * 10)
    assert tolerance_for("attn_probs", "float32").bound(1000.0) == pytest.approx(1e-5 + 1e-4)
    assert tolerance_for("q", "float16").bound(1.0) > tolerance_for("q", "float32").bound(1.0)
    with pytest.raises(LlamaParityError):
        tolerance_for("q", "int8")


def test_rope_layout_permutations_are_inverse():
    x = np.arange(2 * 16, dtype=np.float32).reshape(2, 16)
    assert interleaved_to_half(x)[0, :4].tolist() == [0, 2, 4, 6]
    np.testing.assert_array_equal(half_to_interleaved(interleaved_to_half(x)), x)


def test_compare_rejects_different_prompts(tiny):
    first = trace_forward(tiny, PROMPT_IDS)
    second = trace_forward(tiny, PROMPT_IDS[:-1] + [3])
    with pytest.raises(LlamaParityError, match="same --prompt-ids"):
        compare_dumps(first, second)


def test_report_html_and_plot(tiny, tmp_path):
    reference = trace_forward(tiny, PROMPT_IDS)
    candidate = trace_forward(tiny, PROMPT_IDS)
    candidate.activations["layers.1.ffn_up"] = candidate.activations["layers.1.ffn_up"] * 1.1
    result = compare_dumps(reference, candidate)
    assert result.first_failure.name == "layers.1.ffn_up"

    table = format_table(result)
    assert re.search(r"^>>\s+layers\.1\.ffn_up\s", table, re.MULTILINE)
    png = render_plot_png([result])
    assert png.startswith(b"\x89PNG")
    page = render_html([result], png)
    assert "data:image/png;base64," + base64.b64encode(png).decode("ascii")[:40] in page
    assert '<tr class="first"><td>&gt;&gt;</td><td>layers.1.ffn_up</td>' in page
    assert "<script" not in page
    assert "http" not in page


def test_diff_cli_report_plot_and_filter(tiny, tmp_path, capsys):
    reference = write_dump(trace_forward(tiny, PROMPT_IDS), tmp_path / "a.safetensors")
    candidate = write_dump(trace_forward(tiny, PROMPT_IDS), tmp_path / "b.safetensors")
    report, plot = tmp_path / "r.html", tmp_path / "p.png"
    code = cli.main([
        "diff", "--against", str(reference), str(candidate), "--filter", "layers.*.attn_*",
        "--layers", "0-1", "--report", str(report), "--plot", str(plot),
    ])
    output = capsys.readouterr().out
    assert code == 0, output
    rows = [line.split()[0] for line in output.splitlines()[1:-1]]
    assert rows == [f"layers.{i}.{kind}" for i in (0, 1) for kind in ("attn_norm", "attn_scores", "attn_probs", "attn_heads", "attn_out")]
    assert plot.read_bytes().startswith(b"\x89PNG")
    assert "base64" in report.read_text()


def test_bfloat16_numpy_against_keras(tmp_path, capsys):
    pytest.importorskip("tensorflow", reason="the Keras implementation needs tensorflow")
    from parity_tests.tiny_models import write_gguf

    config = tiny_config()
    model = write_gguf(tmp_path / "m.gguf", config, random_weights(config, seed=2))
    code = cli.main(["diff", "--model", str(model), "--prompt-ids", "1,5,9,33", "--dtype", "bfloat16"])

    output = capsys.readouterr().out
    assert code == 0, output
    assert "bfloat16" in output


@pytest.mark.parametrize(
    "argv, message",
    [
        (["diff", "--against", "/nonexistent/a.safetensors", "/nonexistent/b.safetensors"], "not found"),
        (["diff", "--against", "{a}"], "at least two sources"),
        (["diff", "--against", "{a}", "{a}", "--layers", "2-1"], "end is before the start"),
        (["diff", "--against", "{a}", "{a}", "--filter", "nothing*"], "share no selected trace point"),
        (["diff", "--impl", "numpy,jax", "--prompt-ids", "1"], "unknown implementation 'jax'"),
        (["dump", "--model", "{a}", "--prompt-ids", "1", "--out", "{out}"], "unrecognized checkpoint"),
    ],
)
def test_diff_cli_errors_are_one_line(tiny, tmp_path, capsys, argv, message):
    dump = write_dump(trace_forward(tiny, PROMPT_IDS), tmp_path / "a.safetensors")
    argv = [arg.format(a=dump, out=tmp_path / "out.safetensors") for arg in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ")
    assert "\n" not in err
    assert message in err
    assert not (tmp_path / "out.safetensors").exists()


def test_smollm2_numpy_against_numpy_dump(smollm2_path, tmp_path, capsys):
    dump = tmp_path / "numpy.safetensors"
    assert cli.main(["dump", "--model", str(smollm2_path), "--prompt-ids", SMOLLM2_PROMPT_IDS, "--out", str(dump)]) == 0
    code = cli.main(["diff", "--model", str(smollm2_path), "--prompt-ids", SMOLLM2_PROMPT_IDS, "--impl", "numpy", "--against", str(dump)])
    output = capsys.readouterr().out
    assert code == 0, output
    assert "all 513 compared trace points pass" in output


def test_smollm2_numpy_against_keras(smollm2_path, tmp_path, capsys):
    pytest.importorskip("tensorflow", reason="tensorflow is not installed")
    out = tmp_path / "run.safetensors"
    code = cli.main(["diff", "--model", str(smollm2_path), "--prompt", "The capital of France is", "--dump", str(out)])
    output = capsys.readouterr().out
    assert code == 0, output
    assert "tf_llama vs numpy_llama (float32 tolerance): all 513 compared trace points pass" in output
    assert read_dump(tmp_path / "run.numpy_llama.safetensors").implementation == "numpy_llama"
    assert read_dump(tmp_path / "run.tf_llama.safetensors").implementation == "tf_llama"


def test_heads_in_tile_order_are_diagnosed(tiny):
    from parity_tests.diff import tile_head_order

    reference = trace_forward(tiny, PROMPT_IDS)
    candidate = trace_forward(tiny, PROMPT_IDS)
    name = "layers.1.attn_heads"
    heads = reference.activations[name].reshape(1, len(PROMPT_IDS), 4, 8)
    # Candidate head order[h] holds reference head h: the output a tile-grouped model gives.
    inverse = np.argsort(tile_head_order(4, 2))
    candidate.activations[name] = heads[:, :, inverse].reshape(1, len(PROMPT_IDS), 32)

    result = compare_dumps(reference, candidate)
    assert result.first_failure.name == name
    assert any("reordering heads as tile instead of repeat" in finding for finding in result.findings), result.findings
