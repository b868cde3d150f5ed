"""flaxft.data: GLUE task registry, the real GLUE TSVs, custom files and user-facing errors."""

import collections
import json
import math
import time

import huggingface_hub
import pandas as pd
import pytest

from flaxft.data.sources import hub_reachable, load_splits
from flaxft.data.tasks import GLUE_TASKS, get_task
from flaxft.config import DataConfig
from flaxft.errors import FlaxftError


def cfg(**overrides):
    """The config's data section, with its defaults."""
    return DataConfig(**overrides)


def counts(ds):
    return dict(collections.Counter(ds["label"]))


def write(path, text, encoding="utf-8"):
    path.write_text(text, encoding=encoding)
    return str(path)


def error(match, **overrides):
    with pytest.raises(FlaxftError, match=match) as info:
        load_splits(cfg(**overrides))
    assert "\n" not in str(info.value)
    return str(info.value)


# ------------------------------------------------------------------------------------------------ tasks


def test_task_registry():
    assert set(GLUE_TASKS) == {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"}
    for spelling in ("sst-2", "SST2", "sst_2"):
        assert get_task(spelling).name == "sst2"
    assert get_task("sts-b").is_regression and get_task("STS-B").num_labels == 1
    mnli = get_task("MNLI")
    assert mnli.label_names == ("entailment", "neutral", "contradiction")
    assert mnli.eval_splits == ("validation_matched", "validation_mismatched")
    assert mnli.split_files["test_mismatched"] == "test_mismatched.tsv"
    assert get_task("qnli").text_columns == ("question", "sentence")
    assert get_task("wnli").label_names == ("not_entailment", "entailment")
    with pytest.raises(FlaxftError, match="unknown GLUE task 'mrcp'.*mrpc"):
        get_task("mrcp")


# ------------------------------------------------------------------------------------------ real GLUE


@pytest.mark.parametrize(
    "task, folder, expected",
    [
        ("mrpc", "MRPC", {"train": {1: 2474, 0: 1194}, "validation": {1: 279, 0: 129}, "test": {-1: 1725}}),
        ("sst2", "SST-2", {"train": {1: 37569, 0: 29780}, "validation": {1: 444, 0: 428}}),
        ("rte", "RTE", {"train": {0: 1249, 1: 1241}, "validation": {0: 146, 1: 131}}),  # 0 = entailment
        ("cola", "CoLA", {"train": {1: 6023, 0: 2528}, "validation": {1: 721, 0: 322}}),
    ],
)
def test_glue_classification_folders(glue_dir, task, folder, expected):
    raw = load_splits(cfg(task=task, path=str(glue_dir / folder)))
    assert {split: counts(ds) for split, ds in raw.splits.items()} == expected
    assert raw.task.name == task and raw.num_labels == 2 and not raw.is_regression
    assert raw.eval_splits == ("validation",)
    assert raw.splits["train"].features["label"].dtype == "int64"
    assert raw.splits["train"].column_names == [*raw.text_columns, "label"]


def test_glue_first_rows(glue_dir):
    mrpc = load_splits(cfg(task="MRPC", path=str(glue_dir)))  # the GLUE root works too
    assert mrpc.splits["train"][0]["sentence1"].startswith("Amrozi accused his brother")
    assert "\ufeff" not in "".join(mrpc.splits["train"].column_names)
    assert mrpc.splits["validation"][0]["sentence2"].startswith('" The foodservice pie')  # bare quote kept
    assert mrpc.id2label == {0: "not_equivalent", 1: "equivalent"}
    cola = load_splits(cfg(task="cola", path=str(glue_dir / "CoLA")))
    assert cola.splits["train"][0] == {
        "sentence": "Our friends won't buy this analysis, let alone the next one we propose.", "label": 1
    }
    assert cola.splits["validation"][-1]["sentence"]  # dev.tsv has no trailing newline


def test_glue_rte_string_labels(glue_dir):
    raw = load_splits(cfg(task="rte", path=str(glue_dir / "RTE")))
    assert raw.label_names == ("entailment", "not_entailment")
    assert raw.splits["train"][0]["label"] == raw.label2id["not_entailment"]  # row 0 is not_entailment
    assert raw.splits["validation"][0]["label"] == 1


def test_glue_stsb(glue_dir):
    raw = load_splits(cfg(task="sts-b", path=str(glue_dir / "STS-B"), max_eval_samples=10))
    train, dev = raw.splits["train"], raw.splits["validation"]
    assert (len(train), len(dev)) == (5749, 10)
    assert raw.is_regression and raw.num_labels == 1 and raw.label_names is None
    assert train.features["label"].dtype == "float32"
    assert abs(sum(train["label"]) / len(train) - 2.701) < 1e-3
    full_dev = load_splits(cfg(task="stsb", path=str(glue_dir / "STS-B"))).splits["validation"]
    assert abs(sum(full_dev["label"]) / len(full_dev) - 2.364) < 1e-3


def test_glue_max_samples(glue_dir):
    raw = load_splits(cfg(task="mrpc", path=str(glue_dir / "MRPC"), max_train_samples=5, max_eval_samples=3))
    assert {s: len(ds) for s, ds in raw.splits.items()} == {"train": 5, "validation": 3, "test": 3}
    assert raw.splits["train"][0]["sentence1"].startswith("Amrozi")


def test_glue_folder_errors(glue_dir, tmp_path):
    error("folder .*nope.* does not exist.*GLUE MRPC folder", task="mrpc", path=str(tmp_path / "nope"))
    error(r"train\.tsv' not found.*\(with train\.tsv, dev\.tsv\)", task="mrpc", path=str(tmp_path))
    (tmp_path / "train.tsv").write_bytes((glue_dir / "RTE" / "train.tsv").read_bytes())
    error(r"dev\.tsv' not found", task="rte", path=str(tmp_path))
    bad = tmp_path / "bad"
    bad.mkdir()
    write(bad / "train.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tb\n")
    write(bad / "dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n")
    error(r"train\.tsv, row 2: 3 tab-separated fields, expected 4 like the header \(line 3: '1\\ta\\tb'\)",
          task="rte", path=str(bad))
    write(bad / "train.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n")
    error(r"dev\.tsv, row 1: label 'maybe' is not one of entailment, not_entailment", task="rte", path=str(bad))
    error("unknown GLUE task 'glu'", task="glu", path=str(bad))


# ---------------------------------------------------------------------------------------------- the Hub


def test_hub_unreachable_fails_fast(monkeypatch):
    # An endpoint that never resolves, so the test is the same with or without a network.
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "https://hub.invalid")
    monkeypatch.setattr("datasets.config.HF_HUB_OFFLINE", False)
    start = time.monotonic()
    message = error("cannot reach the Hugging Face Hub.*data.path=<local GLUE MRPC folder", task="mrpc")
    assert time.monotonic() - start < 15
    assert "HF_HUB_OFFLINE" in message


def test_hub_real_endpoint_offline_fails_fast():
    if hub_reachable():
        pytest.skip("the Hub is reachable from here")
    start = time.monotonic()
    error("Hub.*data.path", task="sst2")
    assert time.monotonic() - start < 15


def test_hub_offline_mode_uses_cache_only(monkeypatch):
    monkeypatch.setattr("datasets.config.HF_HUB_OFFLINE", True)
    assert not hub_reachable()
    # A made-up repo id (data.path may name a Hub dataset) is certainly not cached.
    start = time.monotonic()
    repo = "flaxft-test/no-such-glue"
    error(f"could not load {repo} 'rte' in the local cache", task="rte", path=repo)
    assert time.monotonic() - start < 15


# ---------------------------------------------------------------------------------------------- custom


@pytest.fixture
def files(tmp_path):
    """Writes a small table to tmp_path in the format given by the file extension."""

    def make(name, rows):
        path = tmp_path / name
        frame = pd.DataFrame(rows)
        if name.endswith(".csv"):
            frame.to_csv(path, index=False)
        elif name.endswith(".tsv"):
            frame.to_csv(path, index=False, sep="\t", quoting=3)
        elif name.endswith(".jsonl"):
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        elif name.endswith(".json"):
            path.write_text(json.dumps(rows))
        else:
            frame.to_parquet(path)
        return str(path)

    return make


@pytest.mark.parametrize("ext", ["csv", "tsv", "jsonl", "json", "parquet"])
def test_custom_string_labels_two_texts(files, ext):
    train = files(f"train.{ext}", [
        {"premise": "NA", "hypothesis": "null", "label": "pos"},
        {"premise": "a, \"quoted\" b", "hypothesis": "001", "label": "neg"},
        {"premise": "c", "hypothesis": "d", "label": "pos"},
    ])
    dev = files(f"dev.{ext}", [{"premise": "e", "hypothesis": "f", "label": "neg"}])
    test = files(f"test.{ext}", [{"premise": "g", "hypothesis": "h"}])
    raw = load_splits(cfg(train_file=train, validation_file=dev, test_file=test))
    assert raw.text_columns == ("premise", "hypothesis") and raw.task is None
    assert raw.label_names == ("neg", "pos") and raw.num_labels == 2 and not raw.is_regression
    assert raw.splits["train"][:] == {
        "premise": ["NA", 'a, "quoted" b', "c"], "hypothesis": ["null", "001", "d"], "label": [1, 0, 1]
    }
    assert raw.splits["validation"]["label"] == [0] and raw.splits["test"]["label"] == [-1]
    assert (raw.eval_splits, raw.test_splits) == (("validation",), ("test",))
    assert raw.id2label == {0: "neg", 1: "pos"}


@pytest.mark.parametrize("ext", ["csv", "jsonl", "parquet"])
def test_custom_int_labels_one_text(files, ext):
    train = files(f"train.{ext}", [{"text": f"t{i}", "label": i % 3} for i in range(6)])
    dev = files(f"dev.{ext}", [{"text": "x", "label": 2}])
    raw = load_splits(cfg(train_file=train, validation_file=dev, max_train_samples=4))
    assert raw.text_columns == ("text",) and raw.num_labels == 3 and raw.label_names == ("0", "1", "2")
    assert raw.splits["train"]["label"] == [0, 1, 2, 0]
    assert raw.splits["validation"].features["label"].dtype == "int64"
    assert raw.test_splits == ()


@pytest.mark.parametrize("ext", ["tsv", "json"])
def test_custom_float_labels_regression(files, ext):
    train = files(f"train.{ext}", [{"a": "x", "b": "y", "score": s} for s in (0.5, 4.0, 3.25)])
    test = files(f"test.{ext}", [{"a": "x", "b": "y", "score": None}, {"a": "z", "b": "w", "score": 1.5}])
    raw = load_splits(cfg(train_file=train, test_file=test, text_columns=["a", "b"], label_column="score"))
    assert raw.is_regression and raw.num_labels == 1 and raw.label_names is None
    assert raw.splits["train"]["label"] == [0.5, 4.0, 3.25]
    assert raw.splits["train"].features["label"].dtype == "float32"
    nan, score = raw.splits["test"]["label"]
    assert math.isnan(nan) and score == 1.5
    assert raw.id2label == {0: "LABEL_0"}


# ---------------------------------------------------------------------------------------- custom errors


def test_custom_file_errors(tmp_path, files):
    error("no data given.*data.task.*data.train_file")
    error("file .*missing.csv' not found", train_file=str(tmp_path / "missing.csv"))
    error(r"unsupported file type '\.xlsx'.*\.csv, \.tsv", train_file=str(tmp_path / "data.xlsx"))
    error("is empty", train_file=write(tmp_path / "empty.csv", ""))
    error("has no data rows", train_file=write(tmp_path / "header.csv", "text,label\n"))
    bad = write(tmp_path / "bad.csv", "text,label\na,1\nb,1,2\n")
    error(r"bad.csv, row 2: 3 ','-separated fields, expected 2 like the header \(line 3: 'b,1,2'\)", train_file=bad)
    broken = write(tmp_path / "broken.jsonl", '{"text": "a", "label": \n')
    error(r"cannot read .*broken.jsonl' as json", train_file=broken)
    train = files("train.csv", [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}])
    error("data.task=mrpc and data.train_file are both set", task="mrpc", train_file=train)
    error(r"data.path=\S+ needs data.task", path=str(tmp_path))


def test_custom_not_utf8(tmp_path):
    latin1 = write(tmp_path / "latin1.csv", "text,label\ncaf\u00e9,1\nthe,0\n", encoding="latin-1")
    message = error(r"latin1.csv, row 1: not UTF-8 text \(byte 0xe9 on line 2: 'caf\\xe9,1'\); convert the file",
                    train_file=latin1)
    assert "iconv" in message
    latin1_json = write(tmp_path / "latin1.jsonl", '{"text": "caf\u00e9", "label": 1}\n', encoding="latin-1")
    error(r"latin1.jsonl is not UTF-8 text \(byte 0xe9 on line 1, row 1\)", train_file=latin1_json)


def test_custom_column_errors(files):
    train = files("train.csv", [{"body": "a", "y": "x"}, {"body": "b", "y": "z"}])
    error(r"no 'text' or 'sentence' column \(columns: body, y\); set data.text_columns", train_file=train)
    error(r"no column 'label' \(columns: body, y\); set data.text_columns / data.label_column",
          train_file=train, text_columns=["body"])
    error(r"no column 'headline' \(columns: body, y\)", train_file=train, text_columns=["headline"], label_column="y")
    error("give one or two column names", train_file=train, text_columns=["body", "y", "z"])
    dev = files("dev.csv", [{"text": "a"}])
    error(r"dev.csv: no column 'body'", train_file=train, validation_file=dev, text_columns=["body"], label_column="y")
    gap = files("gap.jsonl", [{"text": "a", "label": 1}, {"text": None, "label": 0}])
    error(r"gap.jsonl, row 2: column 'text' is empty", train_file=gap)


def test_custom_label_errors(files):
    train = files("train.csv", [{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}])
    dev = files("dev.csv", [{"text": "c", "label": "neutral"}])
    error(r"dev.csv, row 1: label 'neutral' never appears in the training labels \(neg, pos\)",
          train_file=train, validation_file=dev)

    def labelled(name, *labels):
        return files(name, [{"text": f"t{i}", "label": label} for i, label in enumerate(labels)])

    ints = labelled("ints.csv", 0, 1)
    error(r"row 1: label 2 never appears in the training labels \(0..1\)",
          train_file=ints, validation_file=labelled("d2.csv", 2))
    error("label -1 is negative", train_file=ints, validation_file=labelled("d3.csv", -1))
    error("label -2 is negative", train_file=labelled("neg.csv", -2, 1))
    error("row 2: no label", train_file=labelled("gap.csv", "x", "", "y"))
    error("all training labels are 'x'.*at least two classes", train_file=labelled("one.csv", "x"))
    error("label 'pos' is not an integer class id", train_file=ints, validation_file=labelled("d4.csv", "pos"))
    # -1 in a test file means "unlabelled".
    raw = load_splits(cfg(train_file=ints, test_file=labelled("t.csv", -1, 1)))
    assert raw.splits["test"]["label"] == [-1, 1]


def test_from_datasets_types_labels_like_files():
    import datasets

    from flaxft.data.sources import from_datasets

    train = datasets.Dataset.from_dict({"review": ["great", "awful", "fine"], "stars": ["pos", "neg", "pos"]})
    raw = from_datasets({"train": train, "validation": {"review": ["ok"], "stars": ["neg"]}},
                        text_columns=["review"], label_column="stars")
    assert raw.label_names == ("neg", "pos") and raw.num_labels == 2 and not raw.is_regression
    assert raw.splits["train"]["label"] == [1, 0, 1] and raw.splits["validation"]["label"] == [0]
    assert raw.eval_splits == ("validation",)
    with pytest.raises(FlaxftError, match="never appears in the training labels"):
        from_datasets({"train": train, "validation": {"review": ["?"], "stars": ["meh"]}}, ["review"], "stars")


def test_a_wide_glue_file_is_read_for_its_text_and_label_columns_only(tmp_path):
    """MNLI's layout (parse trees and vote columns beside the pair): only the pair and gold_label are kept from the
    start; a file lacking one of them still reports every column it has."""
    import csv as csv_module

    from etils import epath

    from flaxft.data.tables import read_delimited

    header = ["index", "sentence1_parse", "sentence1", "sentence2", "label1", "gold_label"]
    rows = [[str(i), f"( ( w{i} ) )", f"premise {i}", f"hypothesis {i}", "neutral", "neutral"] for i in range(5)]
    (tmp_path / "train.tsv").write_text("\n".join("\t".join(r) for r in [header, *rows]) + "\n")
    path = epath.Path(tmp_path / "train.tsv")
    kept_header, kept = read_delimited(path, "\t", csv_module.QUOTE_NONE, keep=("sentence1", "sentence2", "gold_label"))
    assert kept_header == ["sentence1", "sentence2", "gold_label"]
    assert kept[3] == ["premise 3", "hypothesis 3", "neutral"]
    full_header, full = read_delimited(path, "\t", csv_module.QUOTE_NONE, keep=("sentence1", "question"))
    assert full_header == header and full == rows
