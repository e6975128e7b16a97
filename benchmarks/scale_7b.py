"""Run a 16-token forward pass of a LLaMA-7B-shaped model in NumPy within a memory budget.

    python benchmarks/scale_7b.py [--folder DIR] [--keep] [--tokens 16] [--output docs/benchmarks.md]

Writes a Hugging Face layout checkpoint with random float16 weights and LLaMA-7B's
shape (dim 4096, 32 layers, 32 heads, hidden 11008, vocab 32000: 6.7e9 parameters,
about 13.5 GB) as one safetensors shard per layer, then, in a fresh process, loads it
with `load_checkpoint` and runs the forward pass with `Llama.from_checkpoint(...,
stream_layers=True)`, which keeps only one block's float32 weights resident. It prints
the peak resident memory of that process, the forward time and the float32 size of the
weights. The temporary folder is removed unless --keep is given.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from report import replace_section

SEVEN_B = dict(dim=4096, n_layers=32, n_heads=32, n_kv_heads=32, vocab_size=32000, hidden_dim=11008, max_seq_len=2048)


def write_checkpoint(folder: Path, seed: int = 0) -> int:
    """Write the random float16 checkpoint shard by shard and return its size in bytes."""
    from safetensors.numpy import save_file
    from tqdm import tqdm

    from weights_tools.checkpoint import Checkpoint, expected_shapes
    from weights_tools.config import ModelConfig
    from weights_tools.convert import hf_config_json
    from weights_tools.hf_reader import hf_tensor_name

    config = ModelConfig(**SEVEN_B)
    shapes = expected_shapes(config)
    rng = np.random.default_rng(seed)
    groups: dict[str, list[str]] = {"model-embeddings.safetensors": [], "model-head.safetensors": []}
    for name in shapes:
        if name.startswith("layers."):
            groups.setdefault(f"model-layer-{int(name.split('.')[1]):02d}.safetensors", []).append(name)
        elif name == "tok_embeddings.weight":
            groups["model-embeddings.safetensors"].append(name)
        else:
            groups["model-head.safetensors"].append(name)

    weight_map = {}
    for file_name, names in tqdm(groups.items(), desc="writing shards", unit="shard"):
        tensors = {}
        for name in names:
            shape = shapes[name]
            if name.endswith("norm.weight"):
                tensors[hf_tensor_name(name)] = np.ones(shape, dtype=np.float16)
            else:
                # Scaled like a trained model's weights so activations stay finite in float16.
                values = rng.standard_normal(shape, dtype=np.float32) * (0.5 / np.sqrt(shape[-1]))
                tensors[hf_tensor_name(name)] = values.astype(np.float16)
            weight_map[hf_tensor_name(name)] = file_name
        save_file(tensors, str(folder / file_name))
        del tensors

    placeholder = Checkpoint(config=config, loaders={}, infos={})
    config_json = hf_config_json(placeholder)
    config_json["torch_dtype"] = "float16"
    (folder / "config.json").write_text(json.dumps(config_json, indent=2))
    index = {"metadata": {}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return sum(path.stat().st_size for path in folder.glob("*.safetensors"))


def run_forward(folder: str, n_tokens: int) -> dict:
    """Load the checkpoint with streamed layers, run one forward pass, return time and peak RSS."""
    from numpy_llama.model import Llama
    from weights_tools.loader import load_checkpoint

    start = time.perf_counter()
    checkpoint = load_checkpoint(folder)
    model = Llama.from_checkpoint(checkpoint, stream_layers=True)
    load_seconds = time.perf_counter() - start

    tokens = np.random.default_rng(1).integers(0, checkpoint.config.vocab_size, size=(1, n_tokens))
    start = time.perf_counter()
    logits = model.forward(tokens)
    forward_seconds = time.perf_counter() - start
    return {
        "load_s": load_seconds,
        "forward_s": forward_seconds,
        "finite": bool(np.all(np.isfinite(logits))),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "float32_weight_gib": checkpoint.weight_bytes() / 2**30,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=None, help="where to write the checkpoint (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint folder afterwards")
    parser.add_argument("--tokens", type=int, default=16, help="number of tokens in the forward pass (default 16)")
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"), help="markdown page to update")
    args = parser.parse_args(argv)
    if args.tokens < 1:
        parser.error(f"--tokens must be at least 1, got {args.tokens}")

    folder = args.folder or Path(tempfile.mkdtemp(prefix="llama7b-"))
    folder.mkdir(parents=True, exist_ok=True)
    write_note = "an existing checkpoint was reused"
    try:
        if not (folder / "config.json").exists():
            start = time.perf_counter()
            size = write_checkpoint(folder)
            write_note = f"writing {size / 1e9:.1f} GB took {time.perf_counter() - start:.0f} s"
            print(f"wrote {size / 1e9:.1f} GB in {time.perf_counter() - start:.0f} s to {folder}", file=sys.stderr)
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            result = pool.apply(run_forward, (str(folder), args.tokens))
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)

    summary = (
        f"LLaMA-7B shape, float16 on disk, {args.tokens}-token forward with streamed layers: "
        f"peak RSS {result['peak_rss_gib']:.2f} GiB (float32 weights would be {result['float32_weight_gib']:.1f} GiB), "
        f"load {result['load_s']:.1f} s, forward {result['forward_s']:.1f} s, logits finite: {result['finite']}"
    )
    print(summary)
    replace_section(args.output, "scale-7b", format_section(args, result, write_note))
    return 0


def format_section(args: argparse.Namespace, result: dict, write_note: str) -> str:
    """Render the result as the "scale-7b" section of docs/benchmarks.md."""
    command = "python benchmarks/scale_7b.py" + (f" --tokens {args.tokens}" if args.tokens != 16 else "")
    return "\n".join(
        [
            "## Scale: a LLaMA-7B-shaped checkpoint",
            "",
            "```",
            command,
            "```",
            "",
            f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, on the machine described above.",
            "Random float16 weights in LLaMA-7B's shape (dim 4096, 32 layers, hidden 11008, vocab 32000),",
            f"written as Hugging Face safetensors shards ({write_note}), then loaded in a",
            "fresh process with `Llama.from_checkpoint(checkpoint, stream_layers=True)`, which memory-maps the shards",
            "and upcasts one block at a time to float32.",
            "",
            "| measurement | value | target |",
            "| --- | --- | --- |",
            f"| peak resident memory | {result['peak_rss_gib']:.2f} GiB | <= 20 GiB |",
            f"| float32 weights, if all were resident | {result['float32_weight_gib']:.1f} GiB | |",
            f"| load (headers, embeddings, head) | {result['load_s']:.1f} s | |",
            f"| {args.tokens}-token forward pass | {result['forward_s']:.1f} s | |",
            f"| logits finite | {result['finite']} | |",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
