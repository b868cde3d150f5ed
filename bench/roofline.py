"""Roofline inputs: this machine's matmul peak and BERT's training FLOPs.

    python bench/roofline.py --model DIR [--json OUT] [--torch]

Peak: the best GFLOP/s of a jitted JAX matmul (and, with --torch, a float32 PyTorch one) over a 2048^3 square and
the shapes of a BERT layer at 2048 tokens (32 rows x 64), in float32 and bfloat16. The "machine peak" used
for MFU is the best float32 number (the benchmarks train in float32).

Training FLOPs of one example of length L (forward + backward = 3x forward; a matmul of [m,k]x[k,n] is
2mkn FLOPs; embeddings are lookups, LayerNorm/softmax/GELU are ignored as usual):
    6 * N * L                    N = layers * (4 H^2 + 2 H I): Q, K, V, output and the two FFN matrices
  + 12 * layers * L^2 * H        attention scores QK^T and probs@V: 2 * (2 L^2 H) forward, x3 for training
  + 6 * (H^2 + H * C)            pooler (on [CLS] only) and classifier head, C = num labels
"Model FLOPs" use each example's real length; "hardware FLOPs" use the padded length of its batch row
(filler rows included), i.e. what the machine actually computed.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

# ---------------------------------------------------------------------------- model FLOPs

def encoder_dims(config) -> dict:
    """Layers, hidden and intermediate size of a flaxft EncoderConfig (any family), and the feed-forward's number
    of [hidden, intermediate] matrices (3 for a gated one: ModernBERT's GeGLU)."""
    return {"layers": config.num_layers, "hidden": config.hidden_size, "intermediate": config.intermediate_size,
            "ffn_matrices": 3 if config.model_type == "modernbert" else 2}


def bert_dims(model_dir) -> dict:
    """encoder_dims of a checkpoint folder (its config.json, read as flaxft reads it)."""
    from flaxft.model import read_config

    return encoder_dims(read_config(model_dir))


def matmul_params(d: dict) -> int:
    h, i = d["hidden"], d["intermediate"]
    return d["layers"] * (4 * h * h + d.get("ffn_matrices", 2) * h * i)


def train_flops(d: dict, sum_len: float, sum_len_sq: float, rows: float, num_labels: int = 2) -> float:
    """Training FLOPs for `rows` sequences with total length sum_len and total squared length sum_len_sq."""
    h = d["hidden"]
    return (6 * matmul_params(d) * sum_len
            + 12 * d["layers"] * h * sum_len_sq
            + 6 * (h * h + h * num_labels) * rows)


def token_stats(batches) -> dict:
    """Sum the statistics above over batches given as (real lengths of its examples, padded length, rows)."""
    keys = ("batches", "examples", "rows", "real_tokens", "real_len_sq", "padded_tokens", "padded_len_sq")
    s = dict.fromkeys(keys, 0)
    for real, length, rows in batches:
        real = [int(x) for x in real]
        s["batches"] += 1
        s["examples"] += len(real)
        s["rows"] += rows
        s["real_tokens"] += sum(real)
        s["real_len_sq"] += sum(x * x for x in real)
        s["padded_tokens"] += rows * length
        s["padded_len_sq"] += rows * length * length
    return s


def utilization(d: dict, stats: dict, seconds: float, peak_flops: float, num_labels: int) -> dict:
    """MFU (real tokens) and hardware utilization (padded tokens) from a run's token statistics."""
    model = train_flops(d, stats["real_tokens"], stats["real_len_sq"], stats["examples"], num_labels)
    hw = train_flops(d, stats["padded_tokens"], stats["padded_len_sq"], stats["rows"], num_labels)
    return {"model_tflops": model / 1e12, "hardware_tflops": hw / 1e12,
            "model_gflops_per_s": model / seconds / 1e9, "hardware_gflops_per_s": hw / seconds / 1e9,
            "mfu": model / seconds / peak_flops, "hfu": hw / seconds / peak_flops}


# ---------------------------------------------------------------------------- matmul peak

def _best_seconds(fn, reps: int) -> float:
    fn()  # warm-up (and compile)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def jax_matmul_gflops(m: int, k: int, n: int, dtype: str, reps: int) -> float:
    import jax
    import jax.numpy as jnp

    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.random.normal(ka, (m, k), jnp.float32).astype(dtype)
    b = jax.random.normal(kb, (k, n), jnp.float32).astype(dtype)
    f = jax.jit(jnp.matmul)
    return 2 * m * k * n / _best_seconds(lambda: f(a, b).block_until_ready(), reps) / 1e9


def torch_matmul_gflops(m: int, k: int, n: int, dtype: str, reps: int) -> float:
    import torch

    a = torch.randn(m, k).to(getattr(torch, dtype))
    b = torch.randn(k, n).to(getattr(torch, dtype))
    with torch.no_grad():
        return 2 * m * k * n / _best_seconds(lambda: a @ b, reps) / 1e9


def measure_peak(d: dict, tokens: int = 2048, reps: int = 10, dtypes=("float32", "bfloat16"),
                 with_torch: bool = False) -> dict:
    h, i = d["hidden"], d["intermediate"]
    shapes = {"square 2048^3": (2048, 2048, 2048), f"[{tokens},{h}]x[{h},{i}] FFN in": (tokens, h, i),
              f"[{tokens},{i}]x[{i},{h}] FFN out": (tokens, i, h), f"[{tokens},{h}]x[{h},{h}] QKV/out": (tokens, h, h)}
    rows = []
    for dtype in dtypes:
        for name, (m, k, n) in shapes.items():
            rows.append({"framework": "jax", "dtype": dtype, "shape": name,
                         "gflops": jax_matmul_gflops(m, k, n, dtype, reps)})
            if with_torch and dtype == "float32":  # torch's CPU bf16 GEMM without AVX512-BF16/AMX: ~1 GFLOP/s
                rows.append({"framework": "torch", "dtype": dtype, "shape": name,
                             "gflops": torch_matmul_gflops(m, k, n, dtype, reps)})
    f32 = [r["gflops"] for r in rows if r["dtype"] == "float32"]
    return {"matmuls": rows, "peak_gflops_float32": max(f32),
            "peak_gflops_bfloat16": max([r["gflops"] for r in rows if r["dtype"] == "bfloat16"], default=None)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="BERT checkpoint folder (config.json)")
    p.add_argument("--tokens", type=int, default=2048, help="rows of the model-shaped matmuls (batch x length)")
    p.add_argument("--reps", type=int, default=10, help="timed repetitions per matmul (the best counts)")
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--torch", action="store_true", help="also time PyTorch matmuls")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()

    d = bert_dims(args.model)
    res = {"model": d, "matmul_params": matmul_params(d),
           **measure_peak(d, args.tokens, args.reps, args.dtypes, args.torch)}
    res["train_flops_per_token_matmuls"] = 6 * matmul_params(d)
    for length in (32, 64, 128):
        res[f"train_flops_per_example_L{length}"] = train_flops(d, length, length ** 2, 1)
    print(f"model: {d}; matmul params N = {res['matmul_params'] / 1e6:.2f} M; "
          f"6N = {res['train_flops_per_token_matmuls'] / 1e6:.1f} MFLOP per trained token")
    for length in (32, 64, 128):
        f = res[f"train_flops_per_example_L{length}"]
        print(f"  training FLOPs per example at L={length}: {f / 1e9:.3f} GFLOP "
              f"(attention share {12 * d['layers'] * d['hidden'] * length ** 2 / f:.1%})")
    print("| framework | dtype | matmul | GFLOP/s |\n| --- | --- | --- | ---: |")
    for r in res["matmuls"]:
        print(f"| {r['framework']} | {r['dtype']} | {r['shape']} | {r['gflops']:.1f} |")
    print(f"peak float32: {res['peak_gflops_float32']:.1f} GFLOP/s; "
          f"peak bfloat16: {res['peak_gflops_bfloat16'] or float('nan'):.1f} GFLOP/s")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
