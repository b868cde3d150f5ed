"""The Hugging Face course recipe (PyTorch Trainer) on the same local GLUE files; writes one JSON file.

    python bench/hf_trainer.py --task mrpc --model DIR --glue ../shared/data/glue --seed 42 --out R.json
        [--epochs 3 --batch-size 32 --lr 5e-5] [--max-steps N] [--max-eval-samples N] [--bf16] [--random-init]

On the CPU unless a CUDA GPU is there (then there, as the Trainer does by default); --bf16 is the Trainer's
bf16=True (autocast), --random-init builds the model from DIR's config.json alone (no weights needed).

Recipe (HF course, chapter 3): AutoModelForSequenceClassification, tokenizer(truncation=True, max_length=128),
DataCollatorWithPadding (dynamic padding of random batches), Trainer's AdamW and linear schedule. Set to
flaxft's defaults (configs/base.yaml): weight decay 0.01, warmup int(0.1 * total steps) as flaxft
computes it, grad-norm clip 1.0 (dropout, AdamW betas/epsilon and the linear decay: both sides' defaults).
No evaluation or checkpoint during training; one predict() at the end. The examples come from flaxft's own
loader, so both sides train and score the very same rows; the metrics come from flaxft.metrics.compute_metrics.
"""

from __future__ import annotations

import os
import time

LAUNCH = float(os.environ.get("BENCH_LAUNCH_TIME", time.time()))  # the driver's clock when it started us

import json
import math
import pathlib
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import run_on_allocator, run_parser  # noqa: E402  (bench/ is on sys.path when run as a script)


def parse_args(argv=None):
    p = run_parser(__doc__.splitlines()[0])
    p.add_argument("--max-seq-length", type=int, default=128)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup-ratio", type=float, default=0.1)
    p.add_argument("--bf16", action="store_true", help="TrainingArguments(bf16=True)")
    p.add_argument("--random-init", action="store_true", help="initialise from config.json instead of the weights")
    return p.parse_args(argv)


class CountingCollator:
    """DataCollatorWithPadding that records (real lengths, padded length, rows) of each batch it builds."""

    def __init__(self, collator):
        self.collator = collator
        self.batches = []

    def __call__(self, features):
        batch = self.collator(features)
        mask = batch["attention_mask"]
        self.batches.append((mask.sum(1).tolist(), mask.shape[1], mask.shape[0]))
        return batch


def main(argv=None) -> None:
    args = parse_args(argv)
    allocator = run_on_allocator(args.allocator or "system")
    import torch
    import transformers
    from roofline import token_stats
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from flaxft.config import DataConfig
    from flaxft.data.sources import load_splits
    from flaxft.metrics import compute_metrics

    setup_start = time.time()
    raw = load_splits(DataConfig(task=args.task, path=str(pathlib.Path(args.glue) / _folder(args.task)),
                                 max_eval_samples=args.max_eval_samples))
    tok = AutoTokenizer.from_pretrained(args.model)
    cols = raw.text_columns

    def encode(batch):
        enc = tok(*[batch[c] for c in cols], truncation=True, max_length=args.max_seq_length)
        enc["labels"] = batch["label"]
        return enc

    train = raw.splits["train"].map(encode, batched=True, remove_columns=raw.splits["train"].column_names)
    dev_name = raw.eval_splits[0]
    dev = raw.splits[dev_name].map(encode, batched=True, remove_columns=raw.splits[dev_name].column_names)

    transformers.set_seed(args.seed)  # the classifier head's initialization
    if args.random_init:
        config = transformers.AutoConfig.from_pretrained(args.model, num_labels=raw.num_labels)
        model = AutoModelForSequenceClassification.from_config(config)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=raw.num_labels)
    steps = args.max_steps or math.ceil(args.epochs * math.ceil(len(train) / args.batch_size))
    collator = CountingCollator(DataCollatorWithPadding(tok))
    tmp = tempfile.TemporaryDirectory()
    targs = TrainingArguments(
        output_dir=tmp.name, use_cpu=not torch.cuda.is_available(), bf16=args.bf16,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size, learning_rate=args.lr, num_train_epochs=args.epochs,
        max_steps=args.max_steps or -1, weight_decay=args.weight_decay,
        warmup_steps=int(args.warmup_ratio * steps), seed=args.seed, eval_strategy="no", save_strategy="no",
        report_to="none", logging_steps=50, disable_tqdm=True)

    class FirstStep(TrainerCallback):
        done = None

        def on_step_end(self, a, state, control, **kw):
            if FirstStep.done is None:
                FirstStep.done = time.time()

    trainer = Trainer(model=model, args=targs, train_dataset=train, data_collator=collator,
                      processing_class=tok, callbacks=[FirstStep()])
    setup_seconds = time.time() - setup_start

    train_call = time.time()
    out = trainer.train()
    train_seconds = time.time() - train_call
    # With max_steps the dataloader may build one batch past the last step; count the trained ones only.
    trained = collator.batches[:out.global_step * targs.gradient_accumulation_steps]
    stats = token_stats(trained)

    eval_start = time.time()
    pred = trainer.predict(dev)
    eval_seconds = time.time() - eval_start
    logits = pred.predictions
    preds = logits[:, 0] if raw.is_regression else logits.argmax(-1)
    metrics = compute_metrics(raw.task.metric, preds, pred.label_ids)
    done = time.time()

    result = {
        "system": "HF Trainer (PyTorch)" + (f" + {allocator}" if allocator != "system" else ""),
        "task": raw.task.name, "seed": args.seed,
        "epochs": out.global_step / math.ceil(len(train) / args.batch_size), "global_step": out.global_step,
        "batch_size": args.batch_size, "learning_rate": args.lr, "dtype": "bfloat16" if args.bf16 else "float32",
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "random_init": args.random_init,
        "train_seconds": train_seconds,
        "train_samples_per_second": stats["examples"] / train_seconds,
        "train_tokens_per_second": stats["real_tokens"] / train_seconds,
        "padding_efficiency": stats["real_tokens"] / stats["padded_tokens"],
        "compile_seconds": 0.0,  # eager PyTorch: nothing is compiled
        "eval_seconds": eval_seconds,
        "setup_seconds": setup_seconds,
        "first_step_seconds_from_launch": FirstStep.done - LAUNCH,
        "first_step_seconds_from_train_call": FirstStep.done - train_call,
        "wall_seconds_in_process": done - LAUNCH,
        "hf_train_runtime": out.metrics["train_runtime"],
        "hf_train_samples_per_second": out.metrics["train_samples_per_second"],
        "metrics": metrics,
        "eval_examples": len(dev),
        "num_labels": raw.num_labels,
        "token_stats": stats,
        "torch_num_threads": torch.get_num_threads(),
        "host_allocator": allocator,
        "torch_version": torch.__version__, "transformers_version": transformers.__version__,
        "optimizer": targs.optim, "warmup_steps": targs.warmup_steps,
    }
    path = pathlib.Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("system", "seed", "train_samples_per_second", "metrics",
                                             "torch_num_threads")}))


def _folder(task: str) -> str:
    from flaxft.data.tasks import get_task

    return get_task(task).folder


if __name__ == "__main__":
    main()
