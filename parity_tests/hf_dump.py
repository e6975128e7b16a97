"""Dump the trace points of a Hugging Face transformers LlamaForCausalLM, under numpy_llama's names.

    llama-parity dump-hf --hf-model DIR --prompt-ids 1,2,3 --out hf.safetensors
    llama-parity diff --against numpy.safetensors hf.safetensors

Most trace points come from PyTorch forward hooks on the model's submodules:

    embed        model.embed_tokens output
    attn_norm    input_layernorm output
    q, k, v      q_proj, k_proj, v_proj outputs, reshaped to [B, S, heads, Hd]
    attn_heads   o_proj input;  attn_out: o_proj output
    resid_mid    post_attention_layernorm input;  ffn_norm: its output
    ffn_gate     gate_proj output;  ffn_up: up_proj output;  ffn_act: down_proj input
    ffn_out      mlp output;  resid_post: decoder layer output
    final_norm   model.norm output;  logits: lm_head output

RoPE and the attention math run inside LlamaAttention.forward, which has no submodule
for them, so while the dump runs this module wraps two functions of
transformers.models.llama.modeling_llama: `apply_rotary_pos_emb` (q_rope, k_rope) and
`eager_attention_forward` (attn_probs, HF's own softmax output). HF never materializes
pre-softmax scores apart from the mask, so attn_scores is recomputed here from HF's
rotated q and k as q k^T * scaling with -inf above the diagonal, matching the spec.
The model is loaded with attn_implementation="eager" so these functions run.

Layout: HF stores q/k rows in the rotate-half RoPE layout (dimension i pairs with
i + Hd/2), numpy_llama in interleaved pairs (2i, 2i+1). The adapter converts q, k,
q_rope and k_rope of every head to interleaved pairs before dumping, so the dump
compares directly with numpy_llama; the dump's notes record this. The conversion is
a per-head permutation of the last axis and changes no value.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from weights_tools.errors import CheckpointError, GenerationError, LlamaParityError, TokenizerError
from weights_tools.trace_format import Recorder, TraceDump, TraceSelection, implementation_version

log = logging.getLogger(__name__)

IMPLEMENTATION = "transformers"
LAYOUT_NOTE = "q, k, q_rope and k_rope converted from Hugging Face rotate-half to interleaved pairs"
SCORES_NOTE = "attn_scores recomputed from HF q_rope/k_rope as q k^T * scaling with a -inf causal mask"


def half_to_interleaved(x: np.ndarray) -> np.ndarray:
    """Reorder the last axis of each head from rotate-half (x_0..x_{Hd/2-1}, y_0..) to pairs (x_0, y_0, x_1, y_1, ...)."""
    head_dim = x.shape[-1]
    return x.reshape(*x.shape[:-1], 2, head_dim // 2).swapaxes(-1, -2).reshape(x.shape)


def _import_transformers():
    try:
        import torch
        from transformers import LlamaForCausalLM
        from transformers.models.llama import modeling_llama
    except ImportError as exc:
        raise LlamaParityError(
            f"dump-hf needs torch and transformers ({exc}); install them with "
            "'pip install -e .[convert-test]' or 'pip install torch transformers'"
        ) from None
    return torch, LlamaForCausalLM, modeling_llama


TORCH_DTYPES = ("float32", "float16", "bfloat16")


def _to_numpy(tensor) -> np.ndarray:
    return tensor.detach().float().cpu().numpy()


class HFTracer:
    """Forward hooks and function wrappers that feed a Recorder while one HF forward runs."""

    def __init__(self, model, modeling_llama, recorder: Recorder):
        self.model = model
        self.modeling = modeling_llama
        self.recorder = recorder
        self.current_prefix = ""
        self.handles: list = []

    def record(self, name: str, tensor) -> None:
        self.recorder(name, _to_numpy(tensor))

    def _output_hook(self, name: str, transform: Callable | None = None):
        def hook(module, inputs, output):
            value = output[0] if isinstance(output, tuple) else output
            array = _to_numpy(value)
            self.recorder(name, transform(array) if transform else array)

        return hook

    def _input_hook(self, name: str):
        def hook(module, inputs):
            self.record(name, inputs[0])

        return hook

    def _enter_layer(self, prefix: str):
        def hook(module, inputs):
            self.current_prefix = prefix

        return hook

    def attach(self) -> None:
        """Register the hooks on every submodule that carries a trace point."""
        base = self.model.model
        add = self.handles.append
        add(base.embed_tokens.register_forward_hook(self._output_hook("embed")))
        for i, layer in enumerate(base.layers):
            prefix = f"layers.{i}."
            attention, mlp = layer.self_attn, layer.mlp
            head_dim = attention.head_dim

            def heads(interleave: bool, head_dim=head_dim):
                def transform(array):
                    array = array.reshape(*array.shape[:-1], -1, head_dim)
                    return half_to_interleaved(array) if interleave else array

                return transform

            add(layer.register_forward_pre_hook(self._enter_layer(prefix)))
            add(layer.input_layernorm.register_forward_hook(self._output_hook(prefix + "attn_norm")))
            add(attention.q_proj.register_forward_hook(self._output_hook(prefix + "q", heads(True))))
            add(attention.k_proj.register_forward_hook(self._output_hook(prefix + "k", heads(True))))
            add(attention.v_proj.register_forward_hook(self._output_hook(prefix + "v", heads(False))))
            add(attention.o_proj.register_forward_pre_hook(self._input_hook(prefix + "attn_heads")))
            add(attention.o_proj.register_forward_hook(self._output_hook(prefix + "attn_out")))
            add(layer.post_attention_layernorm.register_forward_pre_hook(self._input_hook(prefix + "resid_mid")))
            add(layer.post_attention_layernorm.register_forward_hook(self._output_hook(prefix + "ffn_norm")))
            add(mlp.gate_proj.register_forward_hook(self._output_hook(prefix + "ffn_gate")))
            add(mlp.up_proj.register_forward_hook(self._output_hook(prefix + "ffn_up")))
            add(mlp.down_proj.register_forward_pre_hook(self._input_hook(prefix + "ffn_act")))
            add(mlp.register_forward_hook(self._output_hook(prefix + "ffn_out")))
            add(layer.register_forward_hook(self._output_hook(prefix + "resid_post")))
        add(base.norm.register_forward_hook(self._output_hook("final_norm")))
        add(self.model.lm_head.register_forward_hook(self._output_hook("logits")))

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def wrapped_rope(self, original: Callable) -> Callable:
        """Wrap apply_rotary_pos_emb to record its outputs ([B, heads, S, Hd] in HF) as q_rope, k_rope."""

        def apply_rotary_pos_emb(q, k, cos, sin, *args, **kwargs):
            q_embed, k_embed = original(q, k, cos, sin, *args, **kwargs)
            for kind, value in (("q_rope", q_embed), ("k_rope", k_embed)):
                self.recorder(self.current_prefix + kind, half_to_interleaved(_to_numpy(value.transpose(1, 2))))
            return q_embed, k_embed

        return apply_rotary_pos_emb

    def wrapped_attention(self, original: Callable) -> Callable:
        """Wrap eager_attention_forward to record the scores (recomputed) and HF's probabilities."""
        import torch

        def eager_attention_forward(module, query, key, value, attention_mask, scaling, *args, **kwargs):
            keys = self.modeling.repeat_kv(key, module.num_key_value_groups)
            scores = torch.matmul(query.float(), keys.float().transpose(2, 3)) * scaling
            seq_len, total = scores.shape[-2], scores.shape[-1]
            future = torch.ones(seq_len, total, dtype=torch.bool).triu(diagonal=total - seq_len + 1)
            self.recorder(self.current_prefix + "attn_scores", _to_numpy(scores.masked_fill(future, float("-inf"))))
            output, weights = original(module, query, key, value, attention_mask, scaling, *args, **kwargs)
            if weights is not None:
                self.record(self.current_prefix + "attn_probs", weights)
            return output, weights

        return eager_attention_forward

    @contextlib.contextmanager
    def active(self):
        """Attach the hooks and wrappers for the duration of one forward pass."""
        originals = {
            "apply_rotary_pos_emb": self.modeling.apply_rotary_pos_emb,
            "eager_attention_forward": self.modeling.eager_attention_forward,
        }
        self.modeling.apply_rotary_pos_emb = self.wrapped_rope(originals["apply_rotary_pos_emb"])
        self.modeling.eager_attention_forward = self.wrapped_attention(originals["eager_attention_forward"])
        self.attach()
        try:
            yield
        finally:
            self.detach()
            for name, function in originals.items():
                setattr(self.modeling, name, function)


def load_hf_model(folder: str | os.PathLike, dtype: str = "float32"):
    """Load a LlamaForCausalLM from a folder with eager attention, in evaluation mode."""
    torch, LlamaForCausalLM, _ = _import_transformers()
    folder = Path(folder)
    if folder.is_file():
        raise CheckpointError(folder, "--hf-model must be the model's folder (with config.json), not a file in it")
    if not (folder / "config.json").is_file():
        raise CheckpointError(folder, "not a Hugging Face model folder: config.json is missing")
    if dtype not in TORCH_DTYPES:
        raise LlamaParityError(f"unknown dtype {dtype!r}; choose from {', '.join(TORCH_DTYPES)}")
    try:
        model = LlamaForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype), attn_implementation="eager")
    except (OSError, ValueError) as exc:
        raise CheckpointError(folder, f"transformers could not load the model ({exc})") from None
    return model.eval()


def trace_hf_model(model, prompt_ids: Sequence[int], selection: TraceSelection | None = None,
                   model_name: str = "", dtype: str = "float32") -> TraceDump:
    """Run one prefill of prompt_ids through an HF LlamaForCausalLM and return its trace points."""
    torch, _, modeling_llama = _import_transformers()
    recorder = Recorder(selection)
    tracer = HFTracer(model, modeling_llama, recorder)
    tokens = torch.tensor([list(prompt_ids)], dtype=torch.long)
    with torch.no_grad(), tracer.active():
        model(input_ids=tokens, use_cache=False)

    return TraceDump(
        activations=dict(recorder.activations),
        implementation=IMPLEMENTATION,
        implementation_version=implementation_version("transformers"),
        model=model_name,
        dtype=dtype,
        prompt_ids=[int(i) for i in prompt_ids],
        config=None,
        notes={"layout": LAYOUT_NOTE, "attn_scores": SCORES_NOTE},
    )


def hf_config_value(folder: str | os.PathLike, key: str) -> int | None:
    """Return an integer field of the folder's config.json, or None when it cannot be read.

    It lets --layers and prompt ids be checked before the weights load. load_hf_model
    reports a bad config.
    """
    try:
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = config.get(key) if isinstance(config, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def check_prompt_ids(prompt_ids: Sequence[int], vocab_size: int, folder: str | os.PathLike) -> None:
    """Raise GenerationError for an empty prompt or an id outside 0 .. vocab_size - 1."""
    if not prompt_ids:
        raise GenerationError("the prompt is empty; pass a longer --prompt or --prompt-ids 1,2,3")
    if min(prompt_ids) < 0 or max(prompt_ids) >= vocab_size:
        raise GenerationError(
            f"prompt ids must lie in 0 .. {vocab_size - 1} for {folder}, got {list(prompt_ids)[:8]}; "
            "pass ids from the model's tokenizer"
        )


def dump_hf_model(folder: str | os.PathLike, prompt_ids: Sequence[int], dtype: str = "float32",
                  selection: TraceSelection | None = None) -> TraceDump:
    """Load the HF model in `folder` and trace one prefill of prompt_ids."""
    n_layers = hf_config_value(folder, "num_hidden_layers")
    if selection is not None and n_layers is not None:
        selection.check_layers(n_layers, str(folder))
    vocab_size = hf_config_value(folder, "vocab_size")
    if vocab_size is not None:
        check_prompt_ids(prompt_ids, vocab_size, folder)
    model = load_hf_model(folder, dtype)
    if selection is not None:
        selection.check_layers(model.config.num_hidden_layers, str(folder))
    check_prompt_ids(prompt_ids, model.config.vocab_size, folder)
    return trace_hf_model(model, prompt_ids, selection, str(folder), dtype)


def hf_prompt_ids(folder: Path, prompt: str | None, prompt_ids: str | None) -> list[int]:
    """Return --prompt-ids, or --prompt tokenized with the folder's tokenizer.json / tokenizer.model."""
    from weights_tools import cli_common
    from weights_tools.tokenizer import TOKENIZER_FILE_NAMES, load_tokenizer

    if (prompt is None) == (prompt_ids is None):
        raise GenerationError("pass exactly one of --prompt TEXT or --prompt-ids 1,2,3")
    if prompt_ids is not None:
        return cli_common.parse_prompt_ids(prompt_ids)
    # dump-hf has no --tokenizer flag, so the advice differs from load_tokenizer's own.
    if folder.is_dir() and not any((folder / name).is_file() for name in TOKENIZER_FILE_NAMES):
        raise TokenizerError(
            f"{folder}: the folder has no {' or '.join(TOKENIZER_FILE_NAMES)} to tokenize --prompt; "
            "copy the model's tokenizer file into it, or pass --prompt-ids 1,2,3 instead of --prompt"
        )
    ids = list(load_tokenizer(folder).encode(prompt, bos=None))
    if not ids:
        raise GenerationError("the prompt tokenizes to no tokens; pass a longer --prompt or --prompt-ids 1,2,3")
    return ids
