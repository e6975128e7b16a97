"""Autoregressive generation for the TensorFlow model: compiled prefill and decode steps.

Generation runs the prompt through one `tf.function` (prefill) and each new token through
another (decode), both on a preallocated KV cache. Their input signatures leave the batch,
prompt length and cache length unknown, so each function is traced once per
`Generator` (per model), not once per token or per prompt. The decode step is compiled
with XLA by default. Its shapes depend only on the batch and the cache length, so XLA
compiles it once per cache length. The fused step decoded 3 to 5 times faster than the
graph executor on a 2-core CPU (tf-llama generate with and without --no-xla). Sampling runs on the host in
NumPy on the float32 logits of the last position, with the same options and the same
algorithm as the NumPy reference: greedy, temperature, top-k, top-p, seed.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator

import numpy as np
import tensorflow as tf

from tf_llama.model import LlamaModel
from weights_tools.generation import SamplingParams, check_request


def sample_next_token(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    """Choose the next token id from float32 logits [V].

    Greedy takes the argmax. Otherwise the logits are divided by the temperature, all but
    the top_k largest are dropped, then all but the smallest most-likely set whose
    probability reaches top_p (nucleus sampling), and one id is drawn from the
    renormalized probabilities with rng.
    """
    if params.temperature == 0.0:
        return int(np.argmax(logits))

    scaled = np.asarray(logits, dtype=np.float64) / params.temperature
    vocab_size = scaled.shape[-1]
    if 0 < params.top_k < vocab_size:
        threshold = np.sort(scaled)[-params.top_k]
        scaled = np.where(scaled >= threshold, scaled, -np.inf)

    # Softmax in float32, as the NumPy reference does, so a seed draws the same ids.
    scaled32 = scaled.astype(np.float32)
    shifted = np.exp(scaled32 - scaled32.max())
    probs = (shifted / shifted.sum()).astype(np.float64)
    if params.top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        cumulative = np.cumsum(probs[order])
        n_keep = int(np.searchsorted(cumulative, params.top_p)) + 1
        nucleus = np.zeros_like(probs)
        nucleus[order[:n_keep]] = probs[order[:n_keep]]
        probs = nucleus

    probs = probs / probs.sum()
    return int(rng.choice(vocab_size, p=probs))


class Generator:
    """The compiled prefill and decode steps of one model.

    prefill(tokens [B, S], caches) and decode(tokens [B, 1], start_pos, caches) return
    (float32 logits of the last position [B, V], updated caches). `prefill_traces` and
    `decode_traces` count how often TF traced each function; both stay at 1 however
    many tokens are generated. With jit_compile the decode step is compiled by XLA,
    once per batch size and cache length.
    """

    def __init__(self, model: LlamaModel, jit_compile: bool = True):
        self.model = model
        self.jit_compile = jit_compile
        self.prefill_traces = 0
        self.decode_traces = 0

        cfg = model.config
        cache_spec = tf.TensorSpec([None, None, cfg.n_kv_heads, cfg.head_dim], model.compute_dtype)
        caches_spec = tuple((cache_spec, cache_spec) for _ in range(cfg.n_layers))
        self.prefill = tf.function(
            self._prefill, input_signature=[tf.TensorSpec([None, None], tf.int32), caches_spec]
        )
        self.decode = tf.function(
            self._decode,
            jit_compile=jit_compile,
            input_signature=[tf.TensorSpec([None, 1], tf.int32), tf.TensorSpec([], tf.int32), caches_spec],
        )

    def compile(self, batch: int = 1, max_seq_len: int | None = None) -> None:
        """Trace both functions now, so the first generated tokens do not pay for tracing.

        With a max_seq_len it also runs both steps once on an empty cache of that length,
        which is the cache `generate` allocates for prompt length + max_new_tokens =
        max_seq_len. TF optimizes a graph on its first run (about 3 s for SmolLM2 on 2
        cores), and XLA compiles the decode step for that cache length.
        """
        self.prefill.get_concrete_function()
        self.decode.get_concrete_function()
        if max_seq_len is not None:
            cache = self.model.new_cache(batch=batch, max_seq_len=max_seq_len).as_tuple()
            self.prefill(tf.zeros([batch, 1], tf.int32), cache)
            self.decode(tf.zeros([batch, 1], tf.int32), tf.constant(0, tf.int32), cache)

    def _prefill(self, tokens, caches):
        self.prefill_traces += 1  # Runs only while TF traces, not on every call.
        return self.model(tokens, start_pos=0, caches=caches, last_only=True)

    def _decode(self, tokens, start_pos, caches):
        self.decode_traces += 1  # Runs only while TF traces, not on every call.
        return self.model(tokens, start_pos=start_pos, caches=caches, last_only=True)

    def generate(
        self,
        prompt_ids: list[int],
        max_new_tokens: int,
        params: SamplingParams = SamplingParams(),
        stop_ids: Iterable[int] = (),
    ) -> Iterator[int]:
        """Yield up to max_new_tokens new token ids, each as soon as it is sampled.

        Generation stops after a token in stop_ids, which is yielded. Raises
        GenerationError on the first next() when the request does not fit the model.
        """
        check_request(prompt_ids, max_new_tokens, self.model.config)
        if max_new_tokens == 0:
            return
        stop = set(stop_ids)
        rng = np.random.default_rng(params.seed)
        cache = self.model.new_cache(batch=1, max_seq_len=len(prompt_ids) + max_new_tokens)

        logits, caches = self.prefill(tf.constant([prompt_ids], tf.int32), cache.as_tuple())
        position = len(prompt_ids)
        for step in range(max_new_tokens):
            token = sample_next_token(logits.numpy()[0], params, rng)
            yield token
            if token in stop or step == max_new_tokens - 1:
                return
            logits, caches = self.decode(tf.constant([[token]], tf.int32), tf.constant(position, tf.int32), caches)
            position += 1


_generators: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def generator_for(model: LlamaModel, jit_compile: bool = True) -> Generator:
    """Return the model's Generator, creating it on first use so its traces are reused."""
    generators = _generators.setdefault(model, {})
    if jit_compile not in generators:
        generators[jit_compile] = Generator(model, jit_compile)
    return generators[jit_compile]


def generate(
    model: LlamaModel,
    prompt_ids: list[int],
    max_new_tokens: int,
    params: SamplingParams = SamplingParams(),
    stop_ids: Iterable[int] = (),
) -> Iterator[int]:
    """Yield up to max_new_tokens new token ids from the model; see Generator.generate."""
    return generator_for(model).generate(prompt_ids, max_new_tokens, params, stop_ids)
