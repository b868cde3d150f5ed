"""Tokenize each split once (cached on disk by content) into flat arrays ready for batching."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import pathlib
from typing import Optional

import datasets
import numpy as np

from flaxft import storage
from flaxft.errors import FlaxftError

log = logging.getLogger("flaxft")


def load_tokenizer(folder: str | os.PathLike):
    """The checkpoint's fast tokenizer from a local folder: tokenizer.json, or what transformers converts into one
    (vocab.txt; a sentencepiece spm.model, as DeBERTa-v3 ships)."""
    import transformers

    try:
        tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as e:
        raise FlaxftError(f"cannot load a tokenizer from '{folder}' ({str(e).splitlines()[0]}); "
                          "the checkpoint folder needs tokenizer.json, vocab.txt or spm.model") from None
    if not tok.is_fast:
        raise FlaxftError(f"the tokenizer in '{folder}' is not a fast tokenizer; add its tokenizer.json")
    return tok


@dataclasses.dataclass
class TokenizedSplit:
    """Ragged token ids stored flat: example i is ids[offsets[i]:offsets[i+1]]."""
    ids: np.ndarray                 # int32 [total_tokens]
    type_ids: Optional[np.ndarray]  # int32 [total_tokens]; None for families without token types
    offsets: np.ndarray             # int64 [n + 1]
    labels: np.ndarray              # int32 class ids, float32 targets or [n, labels] float32 multi-hot; -1 / NaN
                                    # when unlabelled
    pad_id: int = 0                 # the tokenizer's padding id

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def has_labels(self) -> bool:
        lab = self.labels
        return len(lab) > 0 and bool(np.all(lab >= 0) if lab.dtype.kind == "i" else np.all(np.isfinite(lab)))

    def labels_and_weights(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Labels at `indices` (any shape) and a weight of 1 per real example; filler slots (negative indices)
        get weight 0, and they and unlabelled examples get a harmless label 0."""
        real = indices >= 0
        per_label = real.reshape(real.shape + (1,) * (self.labels.ndim - 1))  # multi-hot labels: [..., labels]
        labels = np.where(per_label, self.labels[np.where(real, indices, 0)], 0).astype(self.labels.dtype)
        labels = np.nan_to_num(labels) if labels.dtype.kind == "f" else np.maximum(labels, 0)
        return labels, real.astype(np.float32)


def _cache_key(ds: datasets.Dataset, text_columns, tokenizer, max_seq_length: int, token_type_ids: bool) -> str:
    """The rows in view order, the tokenizer and the settings: two selections of one table never share a key."""
    h = hashlib.sha256()
    h.update(tokenizer.backend_tokenizer.to_str().encode())
    h.update(repr((tuple(text_columns), max_seq_length, token_type_ids, len(ds))).encode())
    for batch in ds.select_columns(list(text_columns)).iter(batch_size=10_000):
        h.update(json.dumps([batch[c] for c in text_columns]).encode())
    return h.hexdigest()[:24]


def tokenize_split(ds: datasets.Dataset, text_columns, tokenizer, max_seq_length: int,
                   cache_dir: Optional[str] = None, token_type_ids: bool = True) -> TokenizedSplit:
    """Tokenize with `Dataset.map(batched=True)`, cached under cache_dir by content, tokenizer and length.

    Pairs use the tokenizer's own template (BERT's [SEP], RoBERTa's </s></s>); `token_type_ids` only for
    model families that read them."""
    cache = pathlib.Path(cache_dir or os.environ.get("FLAXFT_CACHE", pathlib.Path.home() / ".cache" / "flaxft"))
    cache = cache / "tokenized"
    cache.mkdir(parents=True, exist_ok=True)
    key = _cache_key(ds, text_columns, tokenizer, max_seq_length, token_type_ids)
    columns = ("input_ids", "token_type_ids") if token_type_ids else ("input_ids",)

    def encode(batch):
        enc = tokenizer(*[batch[c] for c in text_columns], truncation=True, max_length=max_seq_length,
                        return_attention_mask=False, return_token_type_ids=token_type_ids)
        return {c: enc[c] for c in columns}

    features = datasets.Features({c: datasets.List(datasets.Value("int32")) for c in columns})
    tokenize = functools.partial(ds.map, encode, batched=True, batch_size=2000, remove_columns=ds.column_names,
                                 features=features, new_fingerprint=key, desc="tokenizing")
    before = set(cache.glob("tmp*"))
    try:
        out = tokenize(cache_file_name=str(cache / f"{key}.arrow"), load_from_cache_file=True)
    except Exception as e:  # noqa: BLE001 - Arrow raises its own OSError kinds
        if not storage.disk_full(e):
            raise
        for partial in set(cache.glob("tmp*")) - before:  # datasets' half-written file (never read, but it takes room)
            partial.unlink(missing_ok=True)
        out = tokenize(keep_in_memory=True)  # the cache only saves time
        log.warning("%s; tokenized in memory instead (free space there or set data.cache_dir to cache it)",
                    storage.no_space(cache, "the tokenization cache", out.data.nbytes))
    ids = out.data.column("input_ids").combine_chunks()
    labels = np.asarray(ds["label"])
    labels = labels.astype(np.float32) if labels.dtype.kind == "f" else labels.astype(np.int32)
    offsets = ids.offsets.to_numpy().astype(np.int64)
    span = slice(offsets[0], offsets[-1])  # a sliced arrow array may not start at offset 0

    def flat(column: str) -> np.ndarray:
        return out.data.column(column).combine_chunks().values.to_numpy()[span].astype(np.int32, copy=False)

    return TokenizedSplit(ids=flat("input_ids"), type_ids=flat("token_type_ids") if token_type_ids else None,
                          offsets=offsets - offsets[0], labels=labels, pad_id=tokenizer.pad_token_id or 0)
