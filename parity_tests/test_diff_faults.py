"""Fault injection: plant a known bug in one layer of numpy_llama and check that `llama-parity diff` finds it.

Each faulty variant swaps one function of numpy_llama.model (RMSNorm, RoPE, the GQA
KV-head expansion) for a wrong one, only while a chosen transformer block runs, so the
specification itself is unchanged. The good and the faulty run are dumped to files and
compared through the CLI, which must name that block's activation as the first failure.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

import numpy_llama.model as spec
from numpy_llama.model import Llama
from numpy_llama.trace import trace_forward
from parity_tests import cli
from parity_tests.diff import compare_dumps, interleaved_to_half
from parity_tests.tiny_models import random_weights, tiny_config
from weights_tools.trace_format import trace_point_names, write_dump

PROMPT_IDS = [1, 7, 33, 2, 61, 18, 5, 40, 11]
N_LAYERS = 5


def small_model_parts(dtype=np.float32, embedding_scale: float | None = None):
    """A 5-block GQA model (4 query heads, 2 KV heads, head_dim 8) with small activations."""
    config = tiny_config(n_layers=N_LAYERS)
    # Weights of std 0.05 keep the residual stream's mean square near 0.01 - 0.03 through
    # all blocks, so RMSNorm's eps (1e-5) visibly matters, as in trained models' early layers.
    weights = random_weights(config, seed=3, scale=0.05)
    if embedding_scale is not None:
        weights["tok_embeddings.weight"] = weights["tok_embeddings.weight"] * embedding_scale
    return config, weights


def run(config, weights, dtype=np.float32):
    model = Llama(config, weights, dtype=dtype)
    return trace_forward(model, PROMPT_IDS, model_name="tiny-random")


@contextlib.contextmanager
def fault_in_layer(monkeypatch, layer: int, function_name: str, replacement):
    """Replace numpy_llama.model.<function_name> by `replacement`, but only while block `layer` runs."""
    original_block = spec.transformer_block
    original_function = getattr(spec, function_name)

    def block(*args, **kwargs):
        prefix = kwargs.get("prefix", args[9] if len(args) > 9 else "")
        if prefix != f"layers.{layer}.":
            return original_block(*args, **kwargs)
        setattr(spec, function_name, replacement)
        try:
            return original_block(*args, **kwargs)
        finally:
            setattr(spec, function_name, original_function)

    with monkeypatch.context() as patch:
        patch.setattr(spec, "transformer_block", block)
        yield


def diff_cli(capsys, reference: Path, candidate: Path) -> tuple[int, str]:
    code = cli.main(["diff", "--against", str(reference), str(candidate)])
    return code, capsys.readouterr().out


def first_marked_row(output: str) -> str:
    """Return the trace point name of the row the CLI marked with '>>'."""
    marked = [line.split()[1] for line in output.splitlines() if line.startswith(">>")]
    assert len(marked) == 1, output
    return marked[0]


def dump_pair(tmp_path, good, bad) -> tuple[Path, Path]:
    return write_dump(good, tmp_path / "good.safetensors"), write_dump(bad, tmp_path / "bad.safetensors")


def test_identical_runs_pass(tmp_path, capsys):
    config, weights = small_model_parts()
    good, again = dump_pair(tmp_path, run(config, weights), run(config, weights))
    code, output = diff_cli(capsys, good, again)
    assert code == 0, output
    assert f"all {len(trace_point_names(N_LAYERS))} compared trace points pass" in output


def test_wrong_eps_in_layer_3(tmp_path, capsys, monkeypatch):
    config, weights = small_model_parts()
    good = run(config, weights)

    correct_rms_norm = spec.rms_norm

    def rms_norm_wrong_eps(x, weight, eps):
        return correct_rms_norm(x, weight, 1e-6)

    with fault_in_layer(monkeypatch, 3, "rms_norm", rms_norm_wrong_eps):
        bad = run(config, weights)

    result = compare_dumps(good, bad)
    assert result.first_failure.name == "layers.3.attn_norm"
    assert any("norm_eps" in finding and "layers.3.attn_norm" in finding for finding in result.findings), result.findings

    code, output = diff_cli(capsys, *dump_pair(tmp_path, good, bad))
    assert code == 1
    assert first_marked_row(output) == "layers.3.attn_norm"
    assert "first failure: layers.3.attn_norm" in output


def apply_rope_rotate_half(x, cos, sin):
    """RoPE in Hugging Face's convention: pair dimension i with i + Hd/2 (wrong for interleaved weights)."""
    x32 = x.astype(np.float32)
    half = x.shape[-1] // 2
    first, second = x32[..., :half], x32[..., half:]
    cos = cos[None, :, None, :]
    sin = sin[None, :, None, :]
    rotated = np.concatenate([first * cos - second * sin, first * sin + second * cos], axis=-1)
    return rotated.astype(x.dtype)


def test_other_rope_convention_in_layer_2(tmp_path, capsys, monkeypatch):
    config, weights = small_model_parts()
    good = run(config, weights)
    with fault_in_layer(monkeypatch, 2, "apply_rope", apply_rope_rotate_half):
        bad = run(config, weights)

    result = compare_dumps(good, bad)
    assert result.first_failure.name == "layers.2.q_rope"
    assert result.row("layers.2.q").status == "pass"
    assert any("permuted for the other RoPE convention" in finding for finding in result.findings), result.findings

    code, output = diff_cli(capsys, *dump_pair(tmp_path, good, bad))
    assert code == 1
    assert first_marked_row(output) == "layers.2.q_rope"
    assert "diagnosis: layers.2: q and k match but q_rope/k_rope do not" in output


def test_rotate_half_weights_in_layer_2(tmp_path, capsys):
    config, weights = small_model_parts()
    good = run(config, weights)
    permuted = dict(weights)
    for name, heads in (("wq", config.n_heads), ("wk", config.n_kv_heads)):
        key = f"layers.2.attention.{name}.weight"
        rows = permuted[key].reshape(heads, config.head_dim, config.dim)
        permuted[key] = interleaved_to_half(rows.swapaxes(1, 2)).swapaxes(1, 2).reshape(-1, config.dim)
    bad = run(config, permuted)

    result = compare_dumps(good, bad)
    assert result.first_failure.name == "layers.2.q"
    assert any(
        "exactly by the rotate-half row permutation" in finding for finding in result.findings
    ), result.findings

    code, output = diff_cli(capsys, *dump_pair(tmp_path, good, bad))
    assert code == 1
    assert first_marked_row(output) == "layers.2.q"


def test_tile_instead_of_repeat_in_layer_1(tmp_path, capsys, monkeypatch):
    config, weights = small_model_parts()
    good = run(config, weights)

    def tile_kv(x, n_rep):
        return np.tile(x, (1, 1, n_rep, 1))

    with fault_in_layer(monkeypatch, 1, "repeat_kv", tile_kv):
        bad = run(config, weights)

    result = compare_dumps(good, bad)
    assert result.first_failure.name == "layers.1.attn_scores"
    assert result.row("layers.1.k_rope").status == "pass"
    assert any("reordering heads as tile instead of repeat" in finding for finding in result.findings), result.findings

    code, output = diff_cli(capsys, *dump_pair(tmp_path, good, bad))
    assert code == 1
    assert first_marked_row(output) == "layers.1.attn_scores"
    assert "tile instead of repeat" in output


def rms_norm_float16_no_upcast(x, weight, eps):
    """RMSNorm computed entirely in x's dtype: the float16 sum of squares overflows to inf."""
    mean_square = np.mean(x * x, axis=-1, keepdims=True, dtype=x.dtype)
    return x / np.sqrt(mean_square + x.dtype.type(eps)) * weight.astype(x.dtype)


def test_float16_rmsnorm_without_upcast(tmp_path, capsys, monkeypatch):
    # Embedding entries of std ~100 make the float16 sum of squares over D=32 exceed 65504.
    config, weights = small_model_parts(embedding_scale=4000.0)
    good = run(config, weights, dtype=np.float16)
    assert np.all(np.isfinite(good.activations["layers.0.attn_norm"]))
    with monkeypatch.context() as patch, np.errstate(over="ignore", invalid="ignore"):
        patch.setattr(spec, "rms_norm", rms_norm_float16_no_upcast)
        bad = run(config, weights, dtype=np.float16)

    result = compare_dumps(good, bad)
    assert result.dtype == "float16"
    assert result.first_failure.name == "layers.0.attn_norm"
    assert any("overflow" in finding for finding in result.findings), result.findings

    code, output = diff_cli(capsys, *dump_pair(tmp_path, good, bad))
    assert code == 1
    assert first_marked_row(output) == "layers.0.attn_norm"
