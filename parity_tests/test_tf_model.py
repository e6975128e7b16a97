"""tf_llama on its own terms: serialization, tracing, compiled generation and the CLI."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from numpy_llama.generate import SamplingParams as SpecSamplingParams  # noqa: E402
from numpy_llama.generate import generate as spec_generate  # noqa: E402
from numpy_llama.model import Llama  # noqa: E402
from parity_tests.strategies import random_checkpoint  # noqa: E402
from parity_tests.tiny_models import write_gguf  # noqa: E402
from tf_llama import cli  # noqa: E402
from tf_llama.generate import Generator, SamplingParams, check_request, generate  # noqa: E402
from tf_llama.layers import Attention, FeedForward, RMSNorm, RotaryEmbedding, TransformerBlock  # noqa: E402
from tf_llama.model import LlamaModel  # noqa: E402
from weights_tools.config import ModelConfig, RopeScaling  # noqa: E402
from weights_tools.errors import GenerationError  # noqa: E402

# Keras' get_weights and save call np.array on TF variables, which NumPy 2 warns about.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

CONFIG = ModelConfig(
    dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=61, hidden_dim=48, max_seq_len=48,
    rope_theta=50000.0, rope_scaling=RopeScaling(8.0, 1.0, 4.0, 16),
)
SCALING = RopeScaling(8.0, 1.0, 4.0, 16)


@pytest.fixture(scope="module")
def checkpoint():
    return random_checkpoint(CONFIG, seed=3)


@pytest.fixture(scope="module")
def tf_model(checkpoint):
    return LlamaModel.from_checkpoint(checkpoint)


@pytest.fixture(scope="module")
def spec_model(checkpoint):
    return Llama.from_checkpoint(checkpoint)


LAYERS = [
    (RMSNorm(1e-6, dtype="float16"), (2, 3, 16), {}),
    (RotaryEmbedding(8, 5e5, SCALING), (2, 3, 4, 8), {"start_pos": 7}),
    (FeedForward(24, dtype="bfloat16"), (2, 3, 16), {}),
    (Attention(4, 2, 8, 1e4, SCALING), (2, 3, 32), {"start_pos": 0}),
    (TransformerBlock(4, 1, 8, 24, 1e-5, 1e4, None), (2, 3, 32), {"start_pos": 0}),
]


@pytest.mark.parametrize("layer, input_shape, kwargs", LAYERS, ids=[type(layer).__name__ for layer, _, _ in LAYERS])
def test_layer_serialization_round_trip(layer, input_shape, kwargs):
    x = tf.random.stateless_normal(input_shape, seed=[1, 2])
    expected = layer(x, **kwargs)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    if not restored.built:
        restored.build(input_shape)
    restored.set_weights(layer.get_weights())

    assert type(restored) is type(layer)
    assert restored.get_config() == layer.get_config()
    assert restored.compute_dtype == layer.compute_dtype
    actual = restored(x, **kwargs)
    for a, e in zip(tf.nest.flatten(actual), tf.nest.flatten(expected)):
        np.testing.assert_array_equal(a.numpy(), e.numpy())


def test_model_keras_file_round_trip(tf_model, tmp_path):
    tokens = np.array([[1, 5, 9, 2], [7, 7, 3, 0]])
    path = tmp_path / "tiny.keras"
    tf_model.save(path)
    loaded = keras.saving.load_model(path)

    assert isinstance(loaded, LlamaModel)
    assert loaded.config == tf_model.config
    np.testing.assert_array_equal(loaded.forward(tokens), tf_model.forward(tokens))


def test_tracer_matches_spec_names_and_shapes(tf_model, spec_model):
    tokens = np.array([[3, 1, 4, 1, 5], [9, 2, 6, 5, 3]])
    tf_trace, spec_trace = [], []
    tf_model.forward(tokens, tracer=lambda name, array: tf_trace.append((name, array.shape)))
    spec_model.forward(tokens, tracer=lambda name, array: spec_trace.append((name, array.shape)))

    assert [name for name, _ in tf_trace] == [name for name, _ in spec_trace]
    assert tf_trace == spec_trace


def test_tracer_ignored_inside_tf_function(tf_model):
    calls = []
    traced = tf.function(lambda tokens: tf_model(tokens, tracer=lambda *args: calls.append(args))[0])
    traced(tf.constant([[1, 2, 3]]))
    assert calls == []


def test_forward_cache_decode_matches_prefill(tf_model):
    tokens = np.array([[4, 8, 15, 16, 23, 42 % 61]])
    cache = tf_model.new_cache(1, 6)
    steps = [tf_model.forward(tokens[:, :3], 0, cache)]
    for position in range(3, 6):
        steps.append(tf_model.forward(tokens[:, position : position + 1], position, cache))
    np.testing.assert_allclose(np.concatenate(steps, axis=1), tf_model.forward(tokens), rtol=1e-5, atol=1e-5)


def test_forward_rejects_bad_positions(tf_model):
    with pytest.raises(ValueError, match="requires the KV cache"):
        tf_model.forward(np.array([[1]]), start_pos=2)
    with pytest.raises(ValueError, match="do not fit the KV cache"):
        tf_model.forward(np.array([[1, 2]]), start_pos=3, cache=tf_model.new_cache(1, 4))


def test_decode_traced_once(tf_model):
    generator = Generator(tf_model)
    first = list(generator.generate([1, 2, 3], 10))
    second = list(generator.generate([4, 5, 6, 7, 8], 12))

    assert len(first) == 10
    assert len(second) == 12
    assert generator.decode_traces == 1
    assert generator.prefill_traces == 1


@pytest.mark.parametrize("jit_compile", [True, False], ids=["xla", "graph"])
def test_decode_step_matches_forward(tf_model, jit_compile):
    tokens = np.array([[4, 8, 15, 16, 23, 42]])
    generator = Generator(tf_model, jit_compile=jit_compile)
    # A cache longer than the sequence: decode attends over its unused rows, masked.
    cache = tf_model.new_cache(1, 10)
    _, caches = generator.prefill(tf.constant(tokens[:, :3], tf.int32), cache.as_tuple())

    steps = []
    for position in range(3, 6):
        logits, caches = generator.decode(tf.constant(tokens[:, position : position + 1], tf.int32), tf.constant(position), caches)
        steps.append(logits.numpy()[0])

    expected = tf_model.forward(tokens)[0, 3:]
    np.testing.assert_allclose(np.stack(steps), expected, rtol=1e-5, atol=1e-5)
    assert generator.decode_traces == 1


def test_compile_runs_xla_before_generation(tf_model):
    generator = Generator(tf_model, jit_compile=True)
    generator.compile(batch=1, max_seq_len=8)

    assert list(generator.generate([1, 2, 3], 5)) == list(Generator(tf_model, jit_compile=False).generate([1, 2, 3], 5))
    assert generator.decode_traces == 1
    assert generator.prefill_traces == 1


def test_greedy_matches_spec(tf_model, spec_model):
    prompt = [5, 17, 33]
    expected = list(spec_generate(spec_model, prompt, 20, SpecSamplingParams()))
    assert list(generate(tf_model, prompt, 20)) == expected


@pytest.mark.parametrize(
    "options",
    [
        {"temperature": 0.8, "seed": 1},
        {"temperature": 1.0, "top_k": 5, "seed": 2},
        {"temperature": 0.7, "top_p": 0.9, "seed": 3},
        {"temperature": 1.3, "top_k": 20, "top_p": 0.8, "seed": 4},
    ],
    ids=["temperature", "top_k", "top_p", "top_k_top_p"],
)
def test_seeded_sampling_matches_spec(tf_model, spec_model, options):
    """The same seed draws the same ids as numpy_llama: both sample the same way on near-equal logits."""
    prompt = [2, 4, 6]
    expected = list(spec_generate(spec_model, prompt, 16, SpecSamplingParams(**options)))
    actual = list(generate(tf_model, prompt, 16, SamplingParams(**options)))
    assert actual == expected


def test_sampling_seed_is_reproducible(tf_model):
    params = SamplingParams(temperature=1.0, seed=11)
    assert list(generate(tf_model, [1, 2], 12, params)) == list(generate(tf_model, [1, 2], 12, params))


def test_generation_stops_after_stop_id(tf_model):
    greedy = list(generate(tf_model, [9, 8, 7], 8))
    stopped = list(generate(tf_model, [9, 8, 7], 8, stop_ids={greedy[2]}))
    assert stopped == greedy[: greedy.index(greedy[2]) + 1]


@pytest.mark.parametrize(
    "prompt, max_new_tokens, message",
    [
        ([], 4, "prompt is empty"),
        ([1, 61], 4, "outside the vocabulary"),
        ([1, 2], -1, "must be >= 0"),
        (list(range(40)), 9, "do not fit"),
        ([1] * 49, 0, "context length is 48"),
    ],
    ids=["empty", "bad_id", "negative_n", "too_long", "prompt_too_long"],
)
def test_request_rejected(tf_model, prompt, max_new_tokens, message):
    with pytest.raises(GenerationError, match=message):
        check_request(prompt, max_new_tokens, tf_model.config)
    with pytest.raises(GenerationError, match=message):
        list(generate(tf_model, prompt, max_new_tokens))


@pytest.mark.parametrize(
    "options", [{"temperature": -1.0}, {"top_k": -2}, {"top_p": 0.0}, {"top_p": 1.5}],
    ids=["temperature", "top_k", "top_p_zero", "top_p_above_one"],
)
def test_sampling_params_rejected(options):
    with pytest.raises(GenerationError):
        SamplingParams(**options)


@pytest.fixture(scope="module")
def tiny_gguf(checkpoint, tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    # GGUF has no field for Llama 3.1 RoPE scaling, so the file's model uses plain RoPE.
    config = CONFIG.replace(rope_scaling=None)
    return write_gguf(path, config, {name: checkpoint[name] for name in checkpoint}), config


@pytest.mark.parametrize("extra", [[], ["--no-xla"]], ids=["xla", "no-xla"])
def test_cli_generate_ids(tiny_gguf, capsys, checkpoint, extra):
    path, config = tiny_gguf
    spec_model = Llama.from_checkpoint(random_checkpoint(config, seed=3))
    expected = list(spec_generate(spec_model, [3, 1, 4], 6, SpecSamplingParams()))

    code = cli.main(["generate", "--model", str(path), "--prompt-ids", "3,1,4", "--ids", "-n", "6", *extra])
    output = capsys.readouterr()
    assert code == 0
    assert output.out.strip() == ",".join(str(token) for token in expected)
    assert "decode" in output.err


def test_cli_reports_one_line_error(tiny_gguf, capsys):
    path, _ = tiny_gguf
    code = cli.main(["generate", "--model", str(path), "--prompt-ids", "1,2", "--ids", "-n", "100"])
    output = capsys.readouterr()
    assert code == 2
    assert output.err.startswith("error: ")
    assert output.err.count("\n") == 1


def test_cli_info(tiny_gguf, capsys):
    path, _ = tiny_gguf
    assert cli.main(["info", "--model", str(path)]) == 0
    output = capsys.readouterr().out
    assert "n_kv_heads" in output
    assert "layers_1/attention/wq" in output
