"""Every encoder family through the whole job, on tiny random checkpoints with a real tokenizer of the
family's kind: the command line on 1 device and on 8 (data=2, fsdp=2, tensor=2), packed rows in bfloat16
with accumulation and remat, exact resume, the Hugging Face export (transformers' logits), flaxft.predict.
"""

import json
import pathlib
import shutil

import jax
import numpy as np
import pytest
import torch
import transformers

from flaxft.cli import run_main
from flaxft.config import load_config
from flaxft.predict import predict
from flaxft.train import main as train_main
from flaxft.trainer import Trainer
from tests.conftest import ROOT, TOKENIZER_FILES, WORDS
from tests.test_deberta import spm_tokenizer_folder
from tests.test_families import DEBERTA_V3
from tests.test_parallel import _curve, _run

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
            max_position_embeddings=130)
# model_type -> (config class, tokenizer kind, config overrides); the seq-cls class comes from the Auto mapping
FAMILIES = {
    "bert": (transformers.BertConfig, "wordpiece", {}),
    "roberta": (transformers.RobertaConfig, "bpe", dict(type_vocab_size=1)),
    "xlm-roberta": (transformers.XLMRobertaConfig, "bpe", dict(type_vocab_size=1)),
    "camembert": (transformers.CamembertConfig, "bpe", dict(type_vocab_size=1)),
    # DeBERTa-v3's shape: rows of 64 within the span (terms by distance), reaching the log buckets past 32; its
    # folder's only tokenizer file is spm.model
    "deberta-v2": (transformers.DebertaV2Config, "spm",
                   dict(DEBERTA_V3, position_buckets=64, max_relative_positions=128)),
    "electra": (transformers.ElectraConfig, "wordpiece", dict(embedding_size=16)),
    "distilbert": (transformers.DistilBertConfig, "wordpiece", dict(dim=32, n_layers=2, n_heads=4, hidden_dim=48)),
    "mpnet": (transformers.MPNetConfig, "mpnet", {}),
    # global layers 0 and 2, a window of 4 tokens each side; every dropout on (transformers' default is none)
    "modernbert": (transformers.ModernBertConfig, "modernbert", dict(
        num_hidden_layers=3, global_attn_every_n_layers=2, local_attention=8, bos_token_id=0, cls_token_id=0,
        eos_token_id=2, sep_token_id=2, embedding_dropout=0.1, attention_dropout=0.1, mlp_dropout=0.1,
        classifier_dropout=0.1)),
}
SEQ_CLS = {"bert": "BertForSequenceClassification", "roberta": "RobertaForSequenceClassification",
           "deberta-v2": "DebertaV2ForSequenceClassification",
           "xlm-roberta": "XLMRobertaForSequenceClassification", "camembert": "CamembertForSequenceClassification",
           "electra": "ElectraForSequenceClassification", "distilbert": "DistilBertForSequenceClassification",
           "mpnet": "MPNetForSequenceClassification", "modernbert": "ModernBertForSequenceClassification"}


def bpe_tokenizer(folder: pathlib.Path):
    """A byte-level BPE in RoBERTa's layout (<s>=0, <pad>=1, </s>=2; pairs as <s> A </s></s> B </s>)."""
    from tokenizers import ByteLevelBPETokenizer

    corpus = [" ".join(WORDS[i:] + WORDS[:i] + ["good", "bad"]) for i in range(len(WORDS))] * 4
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=300, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(folder))
    merges = [tuple(line.split()) for line in (folder / "merges.txt").read_text().splitlines()[1:] if line]
    return transformers.RobertaTokenizer(vocab=json.loads((folder / "vocab.json").read_text()), merges=merges)


def modernbert_tokenizer():
    """A byte-level BPE tokenizer.json in ModernBERT's layout ([CLS]=0, [PAD]=1, [SEP]=2; pairs as
    [CLS] A [SEP] B [SEP]), loaded as transformers' generic fast tokenizer, as ModernBERT's is."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    specials = ["[CLS]", "[PAD]", "[SEP]", "[UNK]", "[MASK]"]
    bpe = Tokenizer(models.BPE(unk_token="[UNK]"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = [" ".join(WORDS[i:] + WORDS[:i] + ["good", "bad"]) for i in range(len(WORDS))] * 4
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, min_frequency=1, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bpe.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                                                       special_tokens=[("[CLS]", 0), ("[SEP]", 2)])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, cls_token="[CLS]", pad_token="[PAD]",
                                                sep_token="[SEP]", unk_token="[UNK]", mask_token="[MASK]",
                                                model_input_names=["input_ids", "attention_mask"])


@pytest.fixture(scope="session")
def family_folders(tmp_path_factory, minilm_dir, mpnet_dir):
    """model_type -> a base checkpoint folder (no head: flaxft adds a fresh one) with the family's tokenizer."""
    root = tmp_path_factory.mktemp("families")
    tokenizers = {"wordpiece": transformers.AutoTokenizer.from_pretrained(minilm_dir),
                  "spm": transformers.DebertaV2Tokenizer.from_pretrained(spm_tokenizer_folder(root / "spm")),
                  "bpe": bpe_tokenizer(root),
                  "modernbert": modernbert_tokenizer(),
                  "mpnet": transformers.AutoTokenizer.from_pretrained(mpnet_dir)}
    folders = {}
    for model_type, (config_cls, kind, extra) in FAMILIES.items():
        tok = tokenizers[kind]
        config = config_cls(**{**TINY, **extra, "vocab_size": len(tok), "pad_token_id": tok.pad_token_id})
        torch.manual_seed(0)
        folder = folders[model_type] = root / model_type
        transformers.AutoModel.from_config(config).save_pretrained(folder)
        if kind == "spm":  # as the Hub's DeBERTa-v3 folders: spm.model, converted to a fast tokenizer on loading
            shutil.copy(root / "spm" / "spm.model", folder)
            shutil.copy(root / "spm" / "tokenizer_config.json", folder)
        else:
            tok.save_pretrained(folder)
    return folders


def write_pairs(path: pathlib.Path, n: int, seed: int) -> None:
    """Sentence pairs; the label says whether 'good' or 'bad' is in the first sentence."""
    rng = np.random.default_rng(seed)
    rows = ["premise,hypothesis,label"]
    for _ in range(n):
        y = int(rng.integers(2))
        first = list(rng.choice(WORDS, size=int(rng.integers(2, 20))))
        first.insert(int(rng.integers(len(first) + 1)), "good" if y else "bad")
        rows.append(f"{' '.join(first)},{' '.join(rng.choice(WORDS, size=int(rng.integers(1, 12))))},{y}")
    path.write_text("\n".join(rows) + "\n")


@pytest.fixture(scope="session")
def pairs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pairs")
    write_pairs(folder / "train.csv", 160, seed=0)
    write_pairs(folder / "dev.csv", 48, seed=1)
    return folder


def run_args(model: pathlib.Path, pairs: pathlib.Path, out: pathlib.Path, *extra) -> list[str]:
    return ["--config", str(ROOT / "configs/custom.yaml"), f"model.name_or_path={model}", "data.packing=false",
            f"data.train_file={pairs / 'train.csv'}", f"data.validation_file={pairs / 'dev.csv'}",
            # one bucket: one train and one eval compilation per run (the families' code is what is under test)
            "data.text_columns=[premise,hypothesis]", "data.max_seq_length=64", "data.bucket_boundaries=[64]",
            "train.batch_size=16",
            "train.learning_rate=1e-3", "train.warmup_ratio=0.0", "train.log_every_steps=1",
            f"data.cache_dir={out.parent / 'cache'}", f"output_dir={out}", *extra]


@pytest.mark.parametrize("model_type", ["roberta", "electra", "distilbert", "mpnet", "deberta-v2", "modernbert"])
def test_same_loss_curve_on_1_and_8_devices(model_type, family_folders, pairs, tmp_path):
    """12 steps with dropout, every parameter sharded by the family's rules over data=2, fsdp=2, tensor=2."""
    args = run_args(family_folders[model_type], pairs, tmp_path / "one", "train.max_steps=12", "checkpoint.export=none")
    _run(args, devices=1)
    ref, ref_summary = _curve(tmp_path / "one")
    args8 = run_args(family_folders[model_type], pairs, tmp_path / "eight", "train.max_steps=12",
                     "checkpoint.export=none", "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2")
    _run(args8, devices=8)
    loss, summary = _curve(tmp_path / "eight")
    assert len(loss) == 12 and summary["mesh"] == {"replica": 1, "data": 2, "fsdp": 2, "tensor": 2}
    np.testing.assert_allclose(loss, ref, rtol=1e-4, atol=1e-5)
    for key in ("eval_loss", "eval_accuracy", "eval_f1"):
        assert abs(summary[key] - ref_summary[key]) < 1e-3, key


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_export_loads_in_transformers_with_the_same_logits(model_type, family_folders, pairs, tmp_path):
    """Train, export (best checkpoint), then transformers' AutoModelForSequenceClassification on the export, and
    flaxft.predict on the export and on the run folder, all give the same logits."""
    out = tmp_path / "run"
    assert run_main(train_main, run_args(family_folders[model_type], pairs, out, "train.max_steps=10",
                                         "train.eval_every_steps=5", "checkpoint.every_steps=5")) == 0
    export = out / "export"
    config = json.loads((export / "config.json").read_text())
    assert config["model_type"] == model_type and config["architectures"] == [SEQ_CLS[model_type]]
    model = transformers.AutoModelForSequenceClassification.from_pretrained(export).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(export)
    ours = predict(str(export), file=str(pairs / "dev.csv"), output_dir=str(tmp_path / "p1"))["dev"]
    from_run = predict(str(out), file=str(pairs / "dev.csv"), output_dir=str(tmp_path / "p2"))["dev"]
    np.testing.assert_array_equal(ours.logits, from_run.logits)
    rows = [line.split(",") for line in (pairs / "dev.csv").read_text().splitlines()[1:]]
    enc = tokenizer([r[0] for r in rows], [r[1] for r in rows], padding=True, truncation=True, max_length=64,
                    return_tensors="pt")
    with torch.no_grad():
        want = model(**enc).logits.numpy()
    np.testing.assert_allclose(ours.logits, want, atol=1e-5, rtol=0)
    assert ours.metrics["test_accuracy"] == pytest.approx(np.mean(want.argmax(-1) == [int(r[2]) for r in rows]))


@pytest.mark.parametrize("model_type", ["roberta", "electra", "distilbert", "mpnet", "deberta-v2", "modernbert"])
def test_packed_bfloat16_accumulation_remat_and_exact_resume(model_type, family_folders, pairs, tmp_path):
    """Packed rows in bfloat16, gradients over 2 micro-batches, remat: one train shape, finite losses; a run
    stopped at a checkpoint (the preemption path) and resumed ends bitwise where an uninterrupted run does."""
    extra = ("data.packing=true", "data.packed_length=64", "train.dtype=bfloat16", "train.grad_accum_steps=2",
             "model.remat=true", "train.max_steps=8", "checkpoint.every_steps=4", "checkpoint.export=none")

    def trainer(out):
        args = run_args(family_folders[model_type], pairs, out, *extra)
        return Trainer(load_config(args[1], args[2:]))

    straight = trainer(tmp_path / "straight")
    summary = straight.train()
    assert summary["train_compilations"] == 1 and np.isfinite(summary["eval_loss"])
    assert summary["packed_length"] == 64 and summary["model_type"] == model_type
    stopped = trainer(tmp_path / "resumed")
    stopped.checkpoints.reached_preemption = lambda step: step == 4  # as SIGTERM would, at step 4
    assert stopped.train() == {"preempted": True, "global_step": 4}
    resumed = trainer(tmp_path / "resumed")
    assert resumed.resumed_step == 4
    resumed.train()
    for a, b in zip(jax.tree.leaves(jax.device_get(straight.state.params)),
                    jax.tree.leaves(jax.device_get(resumed.state.params))):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("model_type", ["roberta", "deberta-v2"])  # DeBERTa's folder: spm.model, no tokenizer.json
def test_predict_any_hugging_face_classifier_folder(model_type, family_folders, pairs, tmp_path):
    """A *ForSequenceClassification folder written by transformers (never trained by flaxft) predicts as in PyTorch."""
    folder = tmp_path / f"hf-{model_type}"
    base = family_folders[model_type]
    torch.manual_seed(1)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(base, num_labels=2).eval()
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "spm.model"):
        if (base / name).exists():
            shutil.copy(base / name, folder / name)
    ours = predict(str(folder), file=str(pairs / "dev.csv"), output_dir=str(tmp_path / "p"),
                   overrides=["data.text_columns=[premise,hypothesis]"])["dev"]
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    rows = [line.split(",") for line in (pairs / "dev.csv").read_text().splitlines()[1:]]
    with torch.no_grad():
        want = model(**tok([r[0] for r in rows], [r[1] for r in rows], padding=True, return_tensors="pt")).logits
    np.testing.assert_allclose(ours.logits, want.numpy(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("change, words", [
    ({"model_type": "gpt2"}, ["model_type 'gpt2' is not supported", "roberta", "mpnet"]),
    ({"max_position_embeddings": 40}, ["data.max_seq_length=64 exceeds the model's 38 positions"]),
    ({"vocab_size": 100}, ["token ids up to 299", "100 rows"]),
])
def test_a_model_that_does_not_fit_is_one_clear_line(change, words, family_folders, pairs, tmp_path, capsys):
    folder = tmp_path / "model"
    shutil.copytree(family_folders["roberta"], folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **change}))
    assert run_main(train_main, run_args(folder, pairs, tmp_path / "out")) == 2
    err = capsys.readouterr().err
    line = [x for x in err.splitlines() if x.startswith("flaxft: error")]
    assert len(line) == 1 and all(w in line[0] for w in words), err[-2000:]
    assert not (tmp_path / "out" / "checkpoints").exists()  # refused before anything was written or compiled


def test_tokenizer_files_of_the_families_are_their_own(family_folders):
    """Pairs use each tokenizer's own template; token types reach only the families that read them."""
    from flaxft.model import family_of, read_config

    roberta = transformers.AutoTokenizer.from_pretrained(family_folders["roberta"])
    ids = roberta("good movie", "bad plot")["input_ids"]
    assert roberta.convert_ids_to_tokens(ids).count("</s>") == 3  # <s> A </s></s> B </s>
    modernbert = transformers.AutoTokenizer.from_pretrained(family_folders["modernbert"])
    tokens = modernbert.convert_ids_to_tokens(modernbert("good movie", "bad plot")["input_ids"])
    assert tokens[0] == "[CLS]" and tokens.count("[SEP]") == 2 and tokens[-1] == "[SEP]"
    reads_types = {t: family_of(read_config(f)).token_type_ids for t, f in family_folders.items()}
    assert reads_types == {"bert": True, "electra": True, "roberta": False, "xlm-roberta": False, "camembert": False,
                           "distilbert": False, "mpnet": False, "deberta-v2": True, "modernbert": False}
    assert {name for name in TOKENIZER_FILES if (family_folders["bert"] / name).exists()} >= {"tokenizer.json"}
