"""Bad rows (issue #17): each is one error naming the file, the row and the value; with data.skip_bad_rows=true
training and validation rows are skipped and counted in the log and summary.json; test files keep every row."""

import json
import logging
import re

import pytest

from flaxft.cli import run_main
from flaxft.config import DataConfig
from flaxft.data.sources import load_splits
from flaxft.errors import FlaxftError
from flaxft.train import main as train_main
from tests.conftest import ckpt_args

GOOD = ["a fine film,pos", "a bad film,neg", "great fun,pos", "dull,neg"]

# (bad row, what the error says after "<file>, row 3: ", the reason it is counted under, the labels of the rows)
CASES = {
    "empty text": (",neg", "column 'text' is empty ('')", "empty_text", None),
    "blank text": ("   ,pos", "column 'text' is empty ('   ')", "empty_text", None),
    "empty label": ("so so,", "no label ('')", "missing_label", None),
    "nan label": ("so so,NaN", "no label ('NaN')", "missing_label", None),
    "number among names": ("so so,1", "label '1' is a number and the training labels are names (neg, pos)",
                           "bad_label", None),
    "name among numbers": ("so so,pos", "label 'pos' is not an integer class id like the training labels",
                           "bad_label", ["1", "0", "1", "0"]),
    "wrong field count": ("so, so,pos", "3 ','-separated fields, expected 2 like the header (line 4: 'so, so,pos')",
                          "wrong_field_count", None),
    "not utf-8": ("caf\udce9 noir,pos", "not UTF-8 text (byte 0xe9 on line 4: 'caf\\xe9 noir,pos')", "not_utf8",
                  None),
}


def write_rows(path, rows):
    """A CSV with a text,label header; str rows written as UTF-8, lone surrogates as the raw bytes they stand for."""
    path.write_bytes(("text,label\n" + "\n".join(rows) + "\n").encode("utf-8", "surrogateescape"))
    return str(path)


def rows_with(bad, labels=None):
    """GOOD's rows (with other labels, if given) and `bad` as the third row."""
    good = GOOD if labels is None else [f"{r.split(',')[0]},{y}" for r, y in zip(GOOD, labels)]
    return [*good[:2], bad, *good[2:]]


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_row_is_an_error_naming_the_file_row_and_value_or_is_skipped(case, tmp_path):
    bad, problem, reason, labels = CASES[case]
    train = write_rows(tmp_path / "train.csv", rows_with(bad, labels))
    with pytest.raises(FlaxftError) as info:
        load_splits(DataConfig(train_file=train, text_columns=["text"]))
    message = str(info.value)
    assert message.startswith(f"{train}, row 3: {problem}; "), message
    assert message.endswith("(or set data.skip_bad_rows=true to skip such rows)") and "\n" not in message

    raw = load_splits(DataConfig(train_file=train, text_columns=["text"], skip_bad_rows=True))
    assert raw.skipped_rows == {"train": {reason: 1}}
    kept = raw.splits["train"]
    assert kept["text"] == [r.split(",")[0] for r in GOOD]  # exactly the bad row is gone
    names = raw.label_names
    assert [names[i] for i in kept["label"]] == (labels or [r.split(",")[1] for r in GOOD])


def test_row_numbers_stay_those_of_the_file_and_each_split_is_counted(tmp_path, caplog):
    """Rows after a skipped malformed row keep their numbers; counts are per split and reason, and logged."""
    train = write_rows(tmp_path / "train.csv", ["a fine film,pos", "x,y,z", "", "a bad film,neg", "meh,", "ok,pos",
                                                ",neg", "bad,neg"])
    dev = write_rows(tmp_path / "dev.csv", ["good,pos", "odd,maybe", "poor,neg"])
    with pytest.raises(FlaxftError, match=re.escape(f"{dev}, row 2: label 'maybe' never appears in the training "
                                                    "labels (neg, pos)")):
        load_splits(DataConfig(train_file=write_rows(tmp_path / "ok.csv", GOOD), validation_file=dev,
                               text_columns=["text"]))
    with caplog.at_level(logging.WARNING, logger="flaxft"):
        raw = load_splits(DataConfig(train_file=train, validation_file=dev, text_columns=["text"],
                                     skip_bad_rows=True))
    assert raw.skipped_rows == {"train": {"wrong_field_count": 1, "missing_label": 1, "empty_text": 1},
                                "validation": {"unknown_label": 1}}
    assert raw.splits["train"]["text"] == ["a fine film", "a bad film", "ok", "bad"]
    assert raw.splits["validation"]["text"] == ["good", "poor"]
    assert f"{train}: skipped 3 bad row(s) (empty_text: 1, missing_label: 1, wrong_field_count: 1" in caplog.text
    assert f"the first: {train}, row 2: 3 ','-separated fields" in caplog.text  # blank line 4 is not a row
    assert f"{dev}: skipped 1 bad row(s) (unknown_label: 1" in caplog.text


def test_labels_with_spaces_around_are_stripped_with_a_warning(tmp_path, caplog):
    train = write_rows(tmp_path / "train.csv", ["a fine film, pos", "a bad film,neg ", "great fun,pos"])
    with caplog.at_level(logging.WARNING, logger="flaxft"):
        raw = load_splits(DataConfig(train_file=train, text_columns=["text"]))
    assert raw.label_names == ("neg", "pos") and raw.splits["train"]["label"] == [1, 0, 1]
    assert raw.skipped_rows == {}
    assert f"{train}: 2 label(s) have spaces around them, read without (the first: row 1)" in caplog.text


def test_test_files_keep_every_row(tmp_path):
    """A test file's rows are all predicted: a bad row there is an error even with skip_bad_rows (and its message
    does not suggest it); empty text is predicted as it is."""
    train = write_rows(tmp_path / "train.csv", GOOD)
    test = tmp_path / "test.csv"
    test.write_text("text\nfine\n\nx,y\n")
    with pytest.raises(FlaxftError) as info:
        load_splits(DataConfig(train_file=train, test_file=str(test), text_columns=["text"], skip_bad_rows=True))
    assert str(info.value) == (f"{test}, row 2: 2 ','-separated fields, expected 1 like the header (line 4: 'x,y'); "
                               "fix or remove that line")
    test.write_text('text\nfine\n""\n')
    raw = load_splits(DataConfig(train_file=train, test_file=str(test), text_columns=["text"], skip_bad_rows=True))
    assert raw.splits["test"]["text"] == ["fine", ""] and raw.skipped_rows == {}


def test_a_run_that_skips_bad_rows_reports_them_in_summary_json(tiny_model, toy_data, tmp_path, capsys, caplog):
    """The command line end to end: a training file and a validation file with bad rows train, and
    summary.json says how many rows of each were skipped and why."""
    lines = (toy_data / "train.csv").read_text().splitlines()
    (tmp_path / "train.csv").write_bytes("\n".join([*lines[:5], "caf\xe9 good,pos", *lines[5:9], "nice film,",
                                                    *lines[9:]]).encode("latin-1") + b"\n")
    dev = (toy_data / "dev.csv").read_text().splitlines()
    (tmp_path / "dev.csv").write_text("\n".join([*dev[:3], "a,b,c", *dev[3:]]) + "\n")
    out = tmp_path / "run"
    code = run_main(train_main, ckpt_args(tiny_model, toy_data, out, f"data.train_file={tmp_path / 'train.csv'}",
                                          f"data.validation_file={tmp_path / 'dev.csv'}", "data.skip_bad_rows=true",
                                          "train.max_steps=2", "checkpoint.export=none"))
    err = capsys.readouterr().err
    assert code == 0, err[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped_rows"] == {"train": {"not_utf8": 1, "missing_label": 1},
                                       "validation": {"wrong_field_count": 1}}
    assert summary["train_examples"] == len(lines) - 1
    assert "skipped 2 bad row(s)" in caplog.text and "skipped 1 bad row(s)" in caplog.text
