"""Measure the machine's bounds and each implementation's speed in one run.

    python benchmarks/run.py [--model PATH] [--output docs/benchmarks.md]

Physical bounds, measured with the installed NumPy:
    matrix-vector bandwidth   bytes of a 256 MiB float32 matrix / time of one W @ x
    copy bandwidth            2 x 256 MiB (read + write) / time of one np.copyto
    matmul throughput         2 n^3 / time of one n x n float32 matmul (n = 2048)

Engines, each in its own spawned process so that peak resident memory is its own:
NumPy (numpy_llama), TensorFlow (tf_llama, compiled with tf.function), Hugging Face
transformers (eager, float32, the same dequantized weights) and llama.cpp through
llama-cpp-python on the same GGUF. An engine whose package is missing is reported as
skipped. Decode is 64 greedy tokens after a 16-token prompt; prefill is one 128-token
forward pass. No timing here is asserted by a test.
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

from report import replace_section

PROMPT_TOKENS = 16
PREFILL_TOKENS = 128
DECODE_TOKENS = 64
REPEATS = 3


def best_time(function, repeats: int) -> float:
    """Return the shortest wall time of `repeats` calls, after one warm-up call."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def measure_bounds() -> dict[str, float]:
    """Measure matrix-vector bandwidth, copy bandwidth and matmul throughput."""
    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((8192, 8192), dtype=np.float32)  # 256 MiB, far larger than any cache
    vector = rng.standard_normal(8192, dtype=np.float32)
    matvec_seconds = best_time(lambda: matrix @ vector, 10)

    destination = np.empty_like(matrix)
    copy_seconds = best_time(lambda: np.copyto(destination, matrix), 5)

    n = 2048
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    matmul_seconds = best_time(lambda: a @ b, 5)
    return {
        "matvec_gb_s": matrix.nbytes / matvec_seconds / 1e9,
        "copy_gb_s": 2 * matrix.nbytes / copy_seconds / 1e9,
        "matmul_gflop_s": 2 * n**3 / matmul_seconds / 1e9,
    }


def peak_rss_mib() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def token_ids(vocab_size: int) -> tuple[list[int], list[int]]:
    rng = np.random.default_rng(1)
    prefill = rng.integers(100, min(vocab_size, 20000), size=PREFILL_TOKENS).tolist()
    return prefill[:PROMPT_TOKENS], prefill


def bench_numpy(model_path: str) -> dict:
    from numpy_llama.model import Llama
    from weights_tools.loader import load_checkpoint

    start = time.perf_counter()
    checkpoint = load_checkpoint(model_path)
    model = Llama.from_checkpoint(checkpoint)
    load_seconds = time.perf_counter() - start
    prompt, prefill = token_ids(model.config.vocab_size)

    cache = model.new_cache(1, PREFILL_TOKENS)
    prefill_seconds = best_time(lambda: model.forward(np.array([prefill]), 0, cache), REPEATS)

    cache = model.new_cache(1, PROMPT_TOKENS + DECODE_TOKENS)
    logits = model.forward(np.array([prompt]), 0, cache)[0, -1]
    start = time.perf_counter()
    for i in range(DECODE_TOKENS):
        token = int(np.argmax(logits))
        logits = model.forward(np.array([[token]]), PROMPT_TOKENS + i, cache)[0, -1]
    decode_seconds = time.perf_counter() - start

    # The weight products of one decode step and nothing else: the part of decode that the
    # bandwidth bound describes. The rest of a step is attention, norms and Python overhead.
    matrices = [w for layer in model.layers for w in layer.values() if w.ndim == 2] + [model.weights["output.weight"]]
    inputs = {w.shape[1]: np.ones((1, w.shape[1]), np.float32) for w in matrices}

    def weight_matmuls():
        for w in matrices:
            inputs[w.shape[1]] @ w.T

    matmul_seconds = best_time(weight_matmuls, 10)
    return {
        "load_s": load_seconds,
        "prefill_tok_s": PREFILL_TOKENS / prefill_seconds,
        "decode_tok_s": DECODE_TOKENS / decode_seconds,
        "matmuls_only_tok_s": 1 / matmul_seconds,
        "peak_rss_mib": peak_rss_mib(),
    }


def bench_tensorflow(model_path: str) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    from tf_llama.generate import Generator
    from tf_llama.model import LlamaModel
    from weights_tools.loader import load_checkpoint

    start = time.perf_counter()
    model = LlamaModel.from_checkpoint(load_checkpoint(model_path))
    load_seconds = time.perf_counter() - start
    generator = Generator(model)
    prompt, prefill = token_ids(model.config.vocab_size)

    def run_prefill():
        cache = model.new_cache(1, PREFILL_TOKENS)
        logits, _ = generator.prefill(tf.constant([prefill], tf.int32), cache.as_tuple())
        return logits.numpy()

    prefill_seconds = best_time(run_prefill, REPEATS)

    cache = model.new_cache(1, PROMPT_TOKENS + DECODE_TOKENS)
    logits, caches = generator.prefill(tf.constant([prompt], tf.int32), cache.as_tuple())
    # The first decode call traces the function; time the steady state after it.
    token = int(np.argmax(logits.numpy()[0]))
    logits, caches = generator.decode(tf.constant([[token]], tf.int32), tf.constant(PROMPT_TOKENS, tf.int32), caches)
    start = time.perf_counter()
    for i in range(1, DECODE_TOKENS):
        token = int(np.argmax(logits.numpy()[0]))
        position = tf.constant(PROMPT_TOKENS + i, tf.int32)
        logits, caches = generator.decode(tf.constant([[token]], tf.int32), position, caches)
    logits.numpy()
    decode_seconds = time.perf_counter() - start
    return {
        "load_s": load_seconds,
        "prefill_tok_s": PREFILL_TOKENS / prefill_seconds,
        "decode_tok_s": (DECODE_TOKENS - 1) / decode_seconds,
        "peak_rss_mib": peak_rss_mib(),
    }


def bench_transformers(model_path: str) -> dict:
    import tempfile

    import torch
    from transformers import LlamaForCausalLM

    from weights_tools.convert import write_hf
    from weights_tools.loader import load_checkpoint

    torch.set_num_threads(os.cpu_count() or 1)
    checkpoint = load_checkpoint(model_path)
    with tempfile.TemporaryDirectory() as folder:
        # The same dequantized float32 weights, in the Hugging Face layout.
        write_hf(checkpoint, Path(folder), progress=False)
        start = time.perf_counter()
        model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        load_seconds = time.perf_counter() - start
    prompt, prefill = token_ids(checkpoint.config.vocab_size)

    with torch.inference_mode():
        prefill_seconds = best_time(lambda: model(torch.tensor([prefill])), REPEATS)

        output = model(torch.tensor([prompt]), use_cache=True)
        past = output.past_key_values
        logits = output.logits[0, -1]
        start = time.perf_counter()
        for _ in range(DECODE_TOKENS):
            token = int(torch.argmax(logits))
            output = model(torch.tensor([[token]]), past_key_values=past, use_cache=True)
            past = output.past_key_values
            logits = output.logits[0, -1]
        decode_seconds = time.perf_counter() - start
    return {
        "load_s": load_seconds,
        "prefill_tok_s": PREFILL_TOKENS / prefill_seconds,
        "decode_tok_s": DECODE_TOKENS / decode_seconds,
        "peak_rss_mib": peak_rss_mib(),
    }


def bench_llama_cpp(model_path: str) -> dict:
    import llama_cpp

    threads = os.cpu_count() or 1
    start = time.perf_counter()
    llm = llama_cpp.Llama(
        model_path=model_path, n_ctx=256, n_batch=PREFILL_TOKENS, n_threads=threads, verbose=False
    )
    load_seconds = time.perf_counter() - start
    prompt, prefill = token_ids(llm.n_vocab())

    def run_prefill():
        llm.reset()
        llm.eval(prefill)

    prefill_seconds = best_time(run_prefill, REPEATS)

    llm.reset()
    llm.eval(prompt)
    start = time.perf_counter()
    for _ in range(DECODE_TOKENS):
        # Llama.eval keeps no logits unless logits_all=True, which would also compute the
        # output head for every prefill position; read the last position's logits instead.
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
        llm.eval([int(np.argmax(logits))])
    decode_seconds = time.perf_counter() - start
    return {
        "load_s": load_seconds,
        "prefill_tok_s": PREFILL_TOKENS / prefill_seconds,
        "decode_tok_s": DECODE_TOKENS / decode_seconds,
        "peak_rss_mib": peak_rss_mib(),
    }


ENGINES = {
    "numpy": ("NumPy (numpy_llama)", bench_numpy, "numpy_llama"),
    "tensorflow": ("TensorFlow (tf_llama, tf.function, XLA decode step)", bench_tensorflow, "tensorflow"),
    "transformers": ("Hugging Face transformers (eager, float32)", bench_transformers, "transformers"),
    "llama.cpp": ("llama.cpp (llama-cpp-python, GGUF as stored)", bench_llama_cpp, "llama_cpp"),
}


def run_engine(name: str, model_path: str) -> dict:
    """Run one engine in a fresh spawned process and return its figures or the reason it was skipped."""
    import importlib.util

    label, function, module = ENGINES[name]
    if importlib.util.find_spec(module) is None:
        return {"skipped": f"{module} is not installed"}
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        try:
            return pool.apply(function, (model_path,))
        except Exception as exc:  # noqa: BLE001 - reported in the results table, the run goes on
            return {"skipped": f"failed: {type(exc).__name__}: {exc}"}


def machine_description() -> list[str]:
    """Return lines describing the CPU, memory and library versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = f"{int(line.split()[1]) / 2**20:.1f} GiB"
                break
    except OSError:
        pass
    return [
        f"- CPU: {cpu}, {os.cpu_count()} logical cores",
        f"- memory: {memory}",
        f"- Python {platform.python_version()}, NumPy {np.__version__}, {platform.platform()}",
    ]


def matmul_flops_per_token(config, context: int) -> float:
    """Floating-point operations of one token's forward pass, attention over `context` keys included."""
    hd = config.head_dim
    per_layer = 2 * config.dim * (config.n_heads * hd + 2 * config.n_kv_heads * hd)  # wq, wk, wv
    per_layer += 2 * config.n_heads * hd * config.dim  # wo
    per_layer += 2 * 3 * config.dim * config.hidden_dim  # w1, w3, w2
    per_layer += 2 * 2 * config.n_heads * hd * context  # q k^T and probs v
    return config.n_layers * per_layer + 2 * config.dim * config.vocab_size


def format_report(model_path: str, bounds: dict, results: dict, weight_bytes: int, flops_per_token: float, command: str) -> str:
    """Render the figures as the markdown page docs/benchmarks.md."""
    decode_bound = bounds["matvec_gb_s"] * 1e9 / weight_bytes
    prefill_bound = bounds["matmul_gflop_s"] * 1e9 / flops_per_token
    lines = [
        "## SmolLM2-135M: bounds, engines and ratios",
        "",
        "All figures in this section come from one run of:",
        "",
        "```",
        command,
        "```",
        "",
        f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC. Model: `{Path(model_path).name}`.",
        "",
        "Machine:",
        "",
        *machine_description(),
        "",
        "The machine is shared and noisy, so compare figures within this run rather than across runs.",
        "",
        "### Physical bounds (installed NumPy)",
        "",
        "| measurement | value |",
        "| --- | --- |",
        f"| matrix-vector bandwidth (float32, 256 MiB matrix) | {bounds['matvec_gb_s']:.1f} GB/s |",
        f"| copy bandwidth (read + write) | {bounds['copy_gb_s']:.1f} GB/s |",
        f"| float32 matmul throughput (2048 x 2048) | {bounds['matmul_gflop_s']:.1f} GFLOP/s |",
        f"| float32 weight bytes read per decoded token | {weight_bytes / 2**20:.1f} MiB |",
        f"| decode bound: matrix-vector bandwidth / weight bytes | {decode_bound:.1f} tokens/s |",
        f"| floating-point work per prefill token ({PREFILL_TOKENS}-token prompt) | {flops_per_token / 1e6:.1f} MFLOP |",
        f"| prefill bound: matmul throughput / work per token | {prefill_bound:.1f} tokens/s |",
        "",
        f"### Engines ({PROMPT_TOKENS}-token prompt + {DECODE_TOKENS} greedy decode steps; {PREFILL_TOKENS}-token prefill)",
        "",
        "| engine | load (s) | prefill (tokens/s) | decode (tokens/s) | peak RSS (MiB) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, (label, _, _) in ENGINES.items():
        result = results[name]
        if "skipped" in result:
            lines.append(f"| {label} | skipped: {result['skipped']} | | | |")
            continue
        lines.append(
            f"| {label} | {result['load_s']:.2f} | {result['prefill_tok_s']:.1f} | "
            f"{result['decode_tok_s']:.1f} | {result['peak_rss_mib']:.0f} |"
        )

    lines += ["", "### Ratios", "", "| ratio | value | target |", "| --- | --- | --- |"]
    numpy_result = results["numpy"]

    def ratio(label: str, value: float | None, target: str) -> None:
        formatted = f"{value:.2f}" if value is not None else "n/a"
        lines.append(f"| {label} | {formatted} | {target} |")

    def figure(name: str, key: str) -> float | None:
        return results[name].get(key) if "skipped" not in results[name] else None

    np_decode = figure("numpy", "decode_tok_s")
    np_prefill = figure("numpy", "prefill_tok_s")
    ratio("NumPy decode / bandwidth bound", np_decode / decode_bound if np_decode else None, ">= 0.8")
    np_matmuls = figure("numpy", "matmuls_only_tok_s")
    if np_decode and np_matmuls:
        ratio("NumPy weight matmuls alone / bandwidth bound", np_matmuls / decode_bound, "(diagnostic)")
        ratio("NumPy decode / its weight matmuls alone", np_decode / np_matmuls, "(diagnostic)")
    ratio("NumPy prefill / matmul bound", np_prefill / prefill_bound if np_prefill else None, ">= 0.7")
    for name, label, decode_target, prefill_target in (
        ("transformers", "Hugging Face", ">= 3", None),
        ("llama.cpp", "llama.cpp", ">= 0.5", ">= 1.5"),
    ):
        other_decode = figure(name, "decode_tok_s")
        other_prefill = figure(name, "prefill_tok_s")
        ratio(f"NumPy / {label} decode", np_decode / other_decode if np_decode and other_decode else None, decode_target)
        if prefill_target:
            ratio(
                f"NumPy / {label} prefill",
                np_prefill / other_prefill if np_prefill and other_prefill else None,
                prefill_target,
            )
    tf_decode = figure("tensorflow", "decode_tok_s")
    ratio("TF / NumPy decode", tf_decode / np_decode if tf_decode and np_decode else None, ">= 1")
    if "skipped" not in numpy_result:
        ratio("NumPy peak RSS / float32 weight bytes", numpy_result["peak_rss_mib"] * 2**20 / weight_bytes, "<= 1.3")
        lines.append(f"| NumPy load + dequantization | {numpy_result['load_s']:.2f} s | <= 2 s |")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="checkpoint to run (default: SmolLM2-135M-Instruct GGUF)")
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"), help="markdown file to write")
    parser.add_argument(
        "--engines", default=",".join(ENGINES), help=f"comma-separated subset of: {', '.join(ENGINES)}"
    )
    args = parser.parse_args(argv)

    from weights_tools.default_model import default_model_path
    from weights_tools.loader import load_checkpoint

    model_path = str(args.model or default_model_path())
    checkpoint = load_checkpoint(model_path)
    weight_bytes = checkpoint.weight_bytes()
    flops_per_token = matmul_flops_per_token(checkpoint.config, context=PREFILL_TOKENS // 2)
    del checkpoint

    print("measuring bounds ...", file=sys.stderr)
    bounds = measure_bounds()
    selected = [name.strip() for name in args.engines.split(",") if name.strip()]
    results = {}
    for name in ENGINES:
        if name not in selected:
            results[name] = {"skipped": "not selected with --engines"}
            continue
        print(f"running {name} ...", file=sys.stderr)
        results[name] = run_engine(name, model_path)
        print(f"  {results[name]}", file=sys.stderr)

    command = "python benchmarks/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report = format_report(model_path, bounds, results, weight_bytes, flops_per_token, command.strip())
    replace_section(args.output, "smollm2", report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
