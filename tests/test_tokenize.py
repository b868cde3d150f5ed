"""Tokenization: cached by the rows a dataset view holds, token types only for families that read them."""

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
