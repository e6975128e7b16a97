"""Token sampling and the autoregressive generation loop for the NumPy model."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from numpy_llama.model import Llama, softmax
from weights_tools.generation import SamplingParams, check_request


def sample_next_token(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    """Pick the next token id from logits [V].

    Greedy returns argmax. Otherwise: divide by temperature, keep the top_k largest logits,
    then keep the smallest set of most likely tokens whose probabilities sum to >= top_p
    (nucleus sampling), and draw from the renormalized distribution.
    """
    if params.temperature == 0.0:
        return int(np.argmax(logits))

    scaled = logits.astype(np.float64) / params.temperature
    if 0 < params.top_k < scaled.shape[-1]:
        kth_largest = np.partition(scaled, -params.top_k)[-params.top_k]
        scaled = np.where(scaled < kth_largest, -np.inf, scaled)

    probs = softmax(scaled).astype(np.float64)
    if params.top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        cumulative = np.cumsum(probs[order])
        # Keep every token up to and including the one that crosses top_p.
        keep = int(np.searchsorted(cumulative, params.top_p)) + 1
        filtered = np.zeros_like(probs)
        filtered[order[:keep]] = probs[order[:keep]]
        probs = filtered

    probs = probs / probs.sum()
    return int(rng.choice(probs.shape[-1], p=probs))


def generate(
    model: Llama,
    prompt_ids: list[int],
    max_new_tokens: int,
    params: SamplingParams = SamplingParams(),
    stop_ids: Iterable[int] = (),
) -> Iterator[int]:
    """Yield up to max_new_tokens new token ids, one at a time as they are produced.

    The prompt is processed in one forward call (prefill), then each new token is fed back
    at the next position (decode); both reuse one preallocated KV cache. Generation stops
    after a token in stop_ids, which is yielded.
    """
    check_request(prompt_ids, max_new_tokens, model.config)
    if max_new_tokens == 0:
        return
    stop = set(stop_ids)
    rng = np.random.default_rng(params.seed)
    cache = model.new_cache(batch=1, max_seq_len=len(prompt_ids) + max_new_tokens)

    logits = model.forward(np.array([prompt_ids]), start_pos=0, cache=cache)[0, -1]
    position = len(prompt_ids)
    for step in range(max_new_tokens):
        token = sample_next_token(logits, params, rng)
        yield token
        if token in stop or step == max_new_tokens - 1:
            return
        logits = model.forward(np.array([[token]]), start_pos=position, cache=cache)[0, -1]
        position += 1
