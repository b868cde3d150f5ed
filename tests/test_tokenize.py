"""Tokenization: cached by the rows a dataset view holds, token types only for families that read them."""

import os
import pathlib
import subprocess
import sys

import datasets
import numpy as np

from flaxft.data.tokenize import _cache_key, load_tokenizer, tokenize_split


def test_cache_key_follows_the_rows_in_view_order(minilm_dir, tmp_path):
    table = datasets.Dataset.from_dict({"text": [f"sentence number {i}" for i in range(40)], "label": [0, 1] * 20})
    tok = load_tokenizer(minilm_dir)
    halves = table.train_test_split(test_size=0.5, seed=0)
    views = [table.shuffle(seed=1), table.shuffle(seed=2), table.select(range(10)), table.select(range(10, 20)),
             halves["train"], halves["test"], table.select(range(10)).flatten_indices()]
    keys = [_cache_key(v, ["text"], tok, 128, True) for v in views]
    # equal-length views of one table (the first two, the middle four) never share a key ...
    assert len(set(keys[:6])) == 6
    # ... the same rows in the same order do, however they were made; other settings do not
    assert keys[6] == keys[2] == _cache_key(table.select(range(10)), ["text"], tok, 128, True)
    assert _cache_key(views[2], ["text"], tok, 64, True) != keys[2] != _cache_key(views[2], ["text"], tok, 128, False)
    # end to end through the on-disk cache: two shuffles give their own token ids
    a, b = (tokenize_split(v, ["text"], tok, 128, str(tmp_path)) for v in views[:2])
    assert not np.array_equal(a.ids, b.ids) and sorted(a.ids.tolist()) == sorted(b.ids.tolist())


def test_token_types_only_when_the_family_reads_them(minilm_dir, tmp_path):
    ds = datasets.Dataset.from_dict({"a": ["one two", "three"], "b": ["four", "five six seven"], "label": [0, 1]})
    tok = load_tokenizer(minilm_dir)
    with_types = tokenize_split(ds, ["a", "b"], tok, 32, str(tmp_path), token_type_ids=True)
    without = tokenize_split(ds, ["a", "b"], tok, 32, str(tmp_path), token_type_ids=False)
    assert without.type_ids is None and with_types.type_ids.max() == 1
    np.testing.assert_array_equal(with_types.ids, without.ids)
    assert with_types.pad_id == tok.pad_token_id


def _pairs(n: int) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"a": [f"sentence {i} about {i % 97} small things" for i in range(n)],
                                       "b": [f"and a second part, number {i * 7 % 1000}" for i in range(n)],
                                       "label": [i % 3 for i in range(n)]})


def _mapped_ranges(file) -> list[tuple[int, int]]:
    """Address ranges of this process that map `file` (from /proc/self/maps)."""
    ranges = []
    for line in open("/proc/self/maps"):
        fields = line.split()
        if len(fields) >= 6 and fields[5] == str(file):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            ranges.append((start, end))
    return ranges


def test_token_arrays_are_views_of_the_memory_mapped_cache(minilm_dir, tmp_path):
    """5,000 pairs: the token arrays are the tokenizer's output, read-only views into the mapped cache file (no
    copy in memory), and a second call maps the same file without writing it again."""
    ds, tok = _pairs(5000), load_tokenizer(minilm_dir)
    split = tokenize_split(ds, ["a", "b"], tok, 16, str(tmp_path))
    enc = tok(ds["a"][:], ds["b"][:], truncation=True, max_length=16)
    np.testing.assert_array_equal(split.ids, np.concatenate(enc["input_ids"]))
    np.testing.assert_array_equal(split.type_ids, np.concatenate(enc["token_type_ids"]))
    np.testing.assert_array_equal(split.lengths, [len(x) for x in enc["input_ids"]])
    np.testing.assert_array_equal(split.labels, np.arange(5000) % 3)
    assert split.labels.dtype == np.int32 and split.lengths.max() == 16  # truncated to max_seq_length
    (cache_file,) = (tmp_path / "tokenized").glob("*.tokens.arrow")
    ranges = _mapped_ranges(cache_file.resolve())
    for array in (split.ids, split.type_ids, split.offsets):
        assert not array.flags.writeable and not array.flags.owndata
        assert any(a <= array.ctypes.data and array.ctypes.data + array.nbytes <= b for a, b in ranges)
    written = cache_file.stat().st_mtime_ns
    again = tokenize_split(ds, ["a", "b"], tok, 16, str(tmp_path))
    assert cache_file.stat().st_mtime_ns == written and sorted(p.name for p in cache_file.parent.iterdir()) == \
        sorted([cache_file.name, cache_file.name + ".lock"])
    np.testing.assert_array_equal(again.ids, split.ids)
    np.testing.assert_array_equal(again.offsets, split.offsets)


TOKENIZE_IN_A_PROCESS = """
import logging, sys
import numpy as np
sys.path.insert(0, {tests!r})
from test_tokenize import _pairs
from flaxft.data.tokenize import load_tokenizer, tokenize_split
logging.basicConfig(level=logging.INFO, format="%(message)s")
split = tokenize_split(_pairs(5000), ["a", "b"], load_tokenizer({model!r}), 32, {cache!r})
print(int(split.ids.astype(np.int64).sum()), len(split))
"""


def test_processes_sharing_a_cache_tokenize_once(minilm_dir, tmp_path):
    """Two processes of a machine start on the same split at once: one tokenizes, the other waits and maps its file."""
    code = TOKENIZE_IN_A_PROCESS.format(tests=str(pathlib.Path(__file__).parent), model=str(minilm_dir),
                                        cache=str(tmp_path))
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outputs]
    assert sum(err.count("tokenized 5000 examples") for _, err in outputs) == 1
    assert outputs[0][0] == outputs[1][0] and outputs[0][0].split()[1] == "5000"
    assert len(list((tmp_path / "tokenized").glob("*.tokens.arrow"))) == 1
    assert not list((tmp_path / "tokenized").glob("*.tmp"))  # no scratch file left behind
