"""Exception types raised by the readers, tokenizers and model code.

Every error a user can cause with a bad file, config or prompt is a subclass of
`LlamaParityError`, so command-line tools can catch that one type and print a single
line instead of a traceback.
"""

from __future__ import annotations

import os


class LlamaParityError(Exception):
    """Base class for every error caused by bad input rather than a bug."""


class ConfigError(LlamaParityError, ValueError):
    """A model config field is missing, has the wrong type or is inconsistent."""

    def __init__(self, field: str, message: str, source: str | os.PathLike | None = None):
        self.field = field
        self.source = os.fspath(source) if source is not None else None
        prefix = f"{self.source}: " if self.source else ""
        super().__init__(f"{prefix}invalid config field '{field}': {message}")


class CheckpointError(LlamaParityError):
    """A checkpoint file is missing, truncated, malformed or not supported."""

    def __init__(self, path: str | os.PathLike | None, message: str, field: str | None = None):
        self.path = os.fspath(path) if path is not None else None
        self.field = field
        where = self.path or "<checkpoint>"
        if field:
            where = f"{where} [{field}]"
        super().__init__(f"{where}: {message}")


class TokenizerError(LlamaParityError):
    """A tokenizer file or embedded vocabulary cannot be loaded or used."""


class GenerationError(LlamaParityError, ValueError):
    """A prompt or generation request does not fit the model (context length, bad ids)."""
