"""Token sampling and the autoregressive generation loop for the NumPy model."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from numpy_llama.model import Llama, softmax
from weights_tools.errors import GenerationError


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is chosen from the logits.

    temperature 0 means greedy (argmax). top_k 0 and top_p 1.0 switch those filters off.
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not np.isfinite(self.temperature) or self.temperature < 0:
            raise GenerationError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise GenerationError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise GenerationError(f"top_p must be in (0, 1], got {self.top_p}")


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


def check_prompt(prompt_ids: list[int], max_new_tokens: int, model: Llama) -> None:
    """Raise GenerationError unless the prompt ids are valid and fit the context with max_new_tokens."""
    config = model.config
    if len(prompt_ids) == 0:
        raise GenerationError("the prompt is empty: give a non-empty prompt or enable BOS")
    bad = [t for t in prompt_ids if not 0 <= t < config.vocab_size]
    if bad:
        raise GenerationError(f"token id {bad[0]} is outside the vocabulary [0, {config.vocab_size})")
    if max_new_tokens < 0:
        raise GenerationError(f"the number of new tokens must be >= 0, got {max_new_tokens}")
    if len(prompt_ids) > config.max_seq_len:
        raise GenerationError(
            f"the prompt has {len(prompt_ids)} tokens but the context length is {config.max_seq_len}; shorten the prompt"
        )
    remaining = config.max_seq_len - len(prompt_ids)
    if max_new_tokens > remaining:
        raise GenerationError(
            f"{max_new_tokens} new tokens do not fit: the prompt uses {len(prompt_ids)} of "
            f"{config.max_seq_len} positions, so at most {remaining} remain; lower -n"
        )


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
    check_prompt(prompt_ids, max_new_tokens, model)
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
