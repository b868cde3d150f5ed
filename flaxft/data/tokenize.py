"""Tokenize each split once (cached on disk by content) into flat arrays ready for batching."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
from typing import Optional

import datasets
import numpy as np

from flaxft.errors import FlaxftError


def load_tokenizer(folder: str | os.PathLike):
    """The checkpoint's fast tokenizer (tokenizer.json or vocab.txt) from a local folder."""
    import transformers

    try:
        tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as e:
        raise FlaxftError(f"cannot load a tokenizer from '{folder}' ({str(e).splitlines()[0]}); "
                          "the checkpoint folder needs tokenizer.json or vocab.txt") from None
    if not tok.is_fast:
        raise FlaxftError(f"the tokenizer in '{folder}' is not a fast tokenizer; add its tokenizer.json")
    return tok


@dataclasses.dataclass
class TokenizedSplit:
    """Ragged token ids stored flat: example i is ids[offsets[i]:offsets[i+1]]."""
    ids: np.ndarray           # int32 [total_tokens]
    type_ids: np.ndarray      # int32 [total_tokens]
    offsets: np.ndarray       # int64 [n + 1]
    labels: np.ndarray        # int32 class ids or float32 targets; -1 / NaN when unlabelled

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def has_labels(self) -> bool:
        lab = self.labels
        return len(lab) > 0 and bool(np.all(lab >= 0) if lab.dtype.kind == "i" else np.all(np.isfinite(lab)))

    def collate(self, indices: np.ndarray, length: int, pad_id: int = 0) -> dict[str, np.ndarray]:
        """A [rows, length] batch; rows with index -1 are filler rows with weight 0."""
        rows = len(indices)
        input_ids = np.full((rows, length), pad_id, dtype=np.int32)
        token_type_ids = np.zeros((rows, length), dtype=np.int32)
        attention_mask = np.zeros((rows, length), dtype=np.int32)
        real = indices >= 0
        for r in np.flatnonzero(real):
            a, b = self.offsets[indices[r]], self.offsets[indices[r] + 1]
            input_ids[r, :b - a] = self.ids[a:b]
            token_type_ids[r, :b - a] = self.type_ids[a:b]
            attention_mask[r, :b - a] = 1
        safe = np.where(real, indices, 0)
        labels = np.where(real, self.labels[safe], 0).astype(self.labels.dtype)
        if labels.dtype.kind == "f":
            labels = np.nan_to_num(labels)
        labels = np.maximum(labels, 0) if labels.dtype.kind == "i" else labels
        return {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask,
                "labels": labels, "weights": real.astype(np.float32)}


def _cache_key(ds: datasets.Dataset, text_columns, tokenizer, max_seq_length: int) -> str:
    h = hashlib.sha256()
    h.update(tokenizer.backend_tokenizer.to_str().encode())
    h.update(repr((tuple(text_columns), max_seq_length, len(ds))).encode())
    for col in text_columns:  # content hash: a changed file never reuses a stale cache
        for chunk in ds.data.column(col).chunks:
            for buf in chunk.buffers():
                if buf is not None:
                    h.update(memoryview(buf))
    return h.hexdigest()[:24]


def tokenize_split(ds: datasets.Dataset, text_columns, tokenizer, max_seq_length: int,
                   cache_dir: Optional[str] = None) -> TokenizedSplit:
    """Tokenize with `Dataset.map(batched=True)`, cached under cache_dir by content, tokenizer and length."""
    cache = pathlib.Path(cache_dir or os.environ.get("FLAXFT_CACHE", pathlib.Path.home() / ".cache" / "flaxft"))
    cache = cache / "tokenized"
    cache.mkdir(parents=True, exist_ok=True)
    key = _cache_key(ds, text_columns, tokenizer, max_seq_length)

    def encode(batch):
        enc = tokenizer(*[batch[c] for c in text_columns], truncation=True, max_length=max_seq_length,
                        return_attention_mask=False, return_token_type_ids=True)
        return {"input_ids": enc["input_ids"], "token_type_ids": enc["token_type_ids"]}

    features = datasets.Features({"input_ids": datasets.List(datasets.Value("int32")),
                                  "token_type_ids": datasets.List(datasets.Value("int32"))})
    out = ds.map(encode, batched=True, batch_size=2000, remove_columns=ds.column_names, features=features,
                 cache_file_name=str(cache / f"{key}.arrow"), new_fingerprint=key,
                 load_from_cache_file=True, desc="tokenizing")
    ids = out.data.column("input_ids").combine_chunks()
    types = out.data.column("token_type_ids").combine_chunks()
    labels = np.asarray(ds["label"])
    labels = labels.astype(np.float32) if labels.dtype.kind == "f" else labels.astype(np.int32)
    offsets = ids.offsets.to_numpy().astype(np.int64)
    span = slice(offsets[0], offsets[-1])  # a sliced arrow array may not start at offset 0
    return TokenizedSplit(
        ids=ids.values.to_numpy()[span].astype(np.int32, copy=False),
        type_ids=types.values.to_numpy()[span].astype(np.int32, copy=False),
        offsets=offsets - offsets[0],
        labels=labels,
    )
