"""Generation options and request checks shared by numpy_llama and tf_llama.

Only the inputs are shared: each implementation samples with its own code, and the
parity tests compare the ids the two draw from the same seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from weights_tools.config import ModelConfig
from weights_tools.errors import GenerationError


@dataclass(frozen=True)
class SamplingParams:
    """Options for choosing the next token from the logits.

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


def check_request(prompt_ids: Sequence[int], max_new_tokens: int, config: ModelConfig) -> None:
    """Raise GenerationError unless the prompt ids are in the vocabulary and fit the context with max_new_tokens."""
    if len(prompt_ids) == 0:
        raise GenerationError("the prompt is empty: give a non-empty prompt or enable BOS")
    invalid = [token for token in prompt_ids if not 0 <= token < config.vocab_size]
    if invalid:
        raise GenerationError(
            f"token id {invalid[0]} is outside the vocabulary [0, {config.vocab_size}); pass ids from the model's tokenizer"
        )
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
