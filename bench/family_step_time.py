"""Train-step time per encoder family at base size: flaxft (jitted) vs PyTorch eager, same shapes and recipe.

    python bench/family_step_time.py [--families bert roberta electra distilbert mpnet] [--batch-size 32]
        [--length 128] [--dtype float32|bfloat16] [--steps 5] [--torch-steps 3] [--json OUT]

Random-init models of each family's base size from transformers' config classes (BERT-base, RoBERTa-base,
ELECTRA-base: embeddings of 768, DistilBERT-base: 6 layers, MPNet-base, DeBERTa-v3-base, ModernBERT-base), 2 labels, a full batch of random
tokens (no padding), dropout on, AdamW with global-norm clipping. flaxft: the train step a run uses
(flaxft.steps.train_step, flaxft.optim) jitted with the state donated; bfloat16 is flaxft's train.dtype
(bf16 activations and matmuls, float32 parameters). PyTorch: model.train(), forward, backward, clipping and
torch.optim.AdamW in eager mode; bfloat16 is torch.autocast. Both on the default device (CPU here; the GPU
when JAX and torch see one). Seconds per step are the median of the timed steps after warm-up.

MFU counts nominal training FLOPs (bench/roofline.py: 6 N L + 12 layers L^2 H per example, all rows full; N
counts ModernBERT's gate, not DeBERTa's relative-position terms; every layer's attention counted as full)
against the best matmul rate measured here in the same dtype (JAX, 4096^3 and the model's shapes).
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import statistics
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))


from common import run_on_allocator  # noqa: E402

if __name__ == "__main__":
    run_on_allocator("auto")  # as flaxft's commands run on CPU (flaxft/host_memory.py); both sides share it

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from roofline import encoder_dims, jax_matmul_gflops, train_flops  # noqa: E402

BASE = {  # family -> (transformers config class name, fields beyond the class defaults)
    "bert": ("BertConfig", {}),
    "roberta": ("RobertaConfig", {}),
    "electra": ("ElectraConfig", dict(embedding_size=768, hidden_size=768, num_hidden_layers=12,
                                      num_attention_heads=12, intermediate_size=3072)),
    "distilbert": ("DistilBertConfig", {}),
    "mpnet": ("MPNetConfig", {}),
    # DeBERTa-v3-base: relative attention (c2p + p2c, 256 log buckets, normed shared table), no absolute positions
    "deberta-v2": ("DebertaV2Config", dict(vocab_size=128100, hidden_size=768, num_hidden_layers=12,
                                           num_attention_heads=12, intermediate_size=3072, type_vocab_size=0,
                                           relative_attention=True,
                                           position_buckets=256, max_relative_positions=-1, pos_att_type=["p2c", "c2p"],
                                           norm_rel_ebd="layer_norm", share_att_key=True, position_biased_input=False,
                                           layer_norm_eps=1e-7, pooler_hidden_size=768)),
    # ModernBERT-base: 22 pre-norm layers, GeGLU of 1152, global attention every third layer, a 128-token window
    "modernbert": ("ModernBertConfig", dict(vocab_size=50368, hidden_size=768, intermediate_size=1152,
                                            num_hidden_layers=22, num_attention_heads=12, global_attn_every_n_layers=3,
                                            local_attention=128, classifier_pooling="mean", norm_bias=False,
                                            attention_bias=False, mlp_bias=False)),
}


def hf_config(family: str):
    import transformers

    name, fields = BASE[family]
    return getattr(transformers, name)(**fields, num_labels=2)


def random_batch(vocab: int, batch: int, length: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(5, vocab, size=(batch, length)).astype(np.int32)


def flaxft_step(family: str, dtype: str):
    """(jitted train step with the state donated, initial state, flaxft config) for a random-init base model;
    the step takes padded or packed batches (flaxft.data.buckets / packing), compiling once per shape."""
    from flaxft.config import TrainConfig
    from flaxft.model import build, config_from_hf, init_params
    from flaxft.optim import make_optimizer
    from flaxft.losses import Objective
    from flaxft.steps import TrainState, train_step

    cfg = config_from_hf(hf_config(family).to_dict())
    model = build(cfg, 2, dtype=dtype)
    params = init_params(cfg, 2, jax.random.key(0))
    tx, schedule = make_optimizer(TrainConfig(learning_rate=2e-5), 1000)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                       rng=jax.random.key_data(jax.random.key(1)))
    step = jax.jit(functools.partial(train_step, model=model, tx=tx, schedule=schedule, objective=Objective()),
                   donate_argnums=0)
    return step, state, cfg


def time_steps(step, state, data: dict, steps: int, warmup: int = 2):
    """(seconds of each timed step after `warmup` steps (the first compiles), the final state)."""
    times = []
    for i in range(steps + warmup):
        start = time.perf_counter()
        state, m = step(state, data)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - start)
    return times[warmup:], state


def flaxft_seconds(family: str, dtype: str, batch: int, length: int, steps: int) -> list[float]:
    step, state, cfg = flaxft_step(family, dtype)
    data = {"input_ids": jnp.asarray(random_batch(cfg.vocab_size, batch, length)),
            "attention_mask": jnp.ones((batch, length), jnp.int32), "labels": jnp.zeros((batch,), jnp.int32),
            "weights": jnp.ones((batch,), jnp.float32)}
    if cfg.type_vocab_size > 1:
        data["token_type_ids"] = jnp.zeros((batch, length), jnp.int32)
    return time_steps(step, state, data, steps)[0]


def torch_seconds(family: str, dtype: str, batch: int, length: int, steps: int) -> list[float]:
    import torch
    import transformers

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    config = hf_config(family)
    model = transformers.AutoModelForSequenceClassification.from_config(config).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.01)
    ids = torch.as_tensor(random_batch(config.vocab_size, batch, length), device=device).long()
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.zeros(batch, dtype=torch.long,
                                                                                                   device=device)}
    times = []
    for i in range(steps + 1):  # one warm-up step
        start = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            loss = model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times[1:]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", nargs="+", default=list(BASE), choices=list(BASE))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--steps", type=int, default=5, help="timed flaxft steps (after two warm-up steps)")
    p.add_argument("--torch-steps", type=int, default=3, help="timed PyTorch steps (after one warm-up step)")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)

    shapes = [(4096, 4096, 4096), (args.batch_size * args.length, 768, 3072)]
    if jax.default_backend() == "gpu":
        shapes.append((8192, 8192, 8192))  # big enough that dispatch does not hide the GPU's rate
    peak = max(jax_matmul_gflops(m, k, n, args.dtype, 5) for m, k, n in shapes) * 1e9
    print(f"device: {jax.devices()[0].device_kind}; {args.dtype} matmul peak measured: {peak / 1e9:.1f} GFLOP/s",
          flush=True)
    rows = []
    for family in args.families:
        from flaxft.model import config_from_hf

        flops = train_flops(encoder_dims(config_from_hf(hf_config(family).to_dict())), args.batch_size * args.length,
                            args.batch_size * args.length ** 2, args.batch_size)
        ours = flaxft_seconds(family, args.dtype, args.batch_size, args.length, args.steps)
        theirs = [] if args.no_torch else torch_seconds(family, args.dtype, args.batch_size, args.length,
                                                       args.torch_steps)
        row = {"family": family, "flaxft_s": statistics.median(ours), "flaxft_all_s": ours,
               "torch_s": statistics.median(theirs) if theirs else None, "torch_all_s": theirs,
               "train_tflops_per_step": flops / 1e12}
        row["flaxft_mfu"] = flops / row["flaxft_s"] / peak
        row["torch_mfu"] = flops / row["torch_s"] / peak if theirs else None
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if not k.endswith("all_s")}), flush=True)
    print(f"\n| family | flaxft s/step | PyTorch eager s/step | PyTorch / flaxft | flaxft MFU | PyTorch MFU |"
          f"  (B={args.batch_size}, L={args.length}, {args.dtype})\n|---|---:|---:|---:|---:|---:|")
    for r in rows:
        torch_cells = (f"{r['torch_s']:.3f} | {r['torch_s'] / r['flaxft_s']:.2f}x" if r["torch_s"] else "- | -")
        torch_mfu = f"{100 * r['torch_mfu']:.1f}%" if r["torch_mfu"] else "-"
        print(f"| {r['family']} | {r['flaxft_s']:.3f} | {torch_cells} | {100 * r['flaxft_mfu']:.1f}% | {torch_mfu} |")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"args": vars(args), "device": jax.devices()[0].device_kind,
                                                       "peak_gflops": peak / 1e9, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
