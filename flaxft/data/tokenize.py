"""Tokenize each split once (cached on disk by content) into flat arrays ready for batching.

The cache file is Arrow IPC with one record batch: each token column is one large_list<int32> array, so its
offsets and values are numpy views of the memory-mapped file, never copies. Processes that share a cache folder
(the processes of a machine in a multi-process run) tokenize a split once: the first takes the file's lock and
writes it, the others wait and map it. A cache folder without room (ENOSPC) only costs time: the split is
tokenized in memory instead, with a warning."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import itertools
import json
import logging
import os
import pathlib
from typing import Optional

import datasets
import filelock
import numpy as np
import pyarrow as pa

from flaxft import storage
from flaxft.errors import FlaxftError

log = logging.getLogger("flaxft")

CACHE_FORMAT = b"flaxft-tokens-2"  # part of every cache key: a new file layout never reads an old file
BATCH = 2000  # rows per tokenizer call


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
    """Ragged token ids stored flat: example i is ids[offsets[i]:offsets[i+1]].

    From tokenize_split, `ids`, `type_ids` and `offsets` are read-only views of the memory-mapped cache file: a
    process reads (and holds in memory) only the pages of the examples it batches."""
    ids: np.ndarray                 # int32 [total_tokens]
    type_ids: Optional[np.ndarray]  # int32 [total_tokens]; None for families without token types
    offsets: np.ndarray             # int64 [n + 1]
    labels: np.ndarray              # int32 class ids, float32 targets or [n, labels] float32 multi-hot; -1 / NaN
                                    # when unlabelled
    pad_id: int = 0                 # the tokenizer's padding id

    @functools.cached_property
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
    """The rows in view order, the tokenizer and the settings: two selections of one table never share a key.

    The text is hashed from its Arrow buffers, without making Python strings: every string's length into one
    hash, the bytes into another, so how the table happens to be chunked does not matter."""
    sizes, text = hashlib.sha256(), hashlib.sha256()
    for batch in ds.select_columns(list(text_columns)).with_format("arrow").iter(batch_size=100_000):
        for column in text_columns:
            for strings in batch.column(column).cast(pa.large_string()).chunks:
                _, offsets, data = strings.buffers()  # a sliced chunk's offsets need not start at 0
                offsets = np.frombuffer(offsets, np.int64)[strings.offset:strings.offset + len(strings) + 1]
                sizes.update(np.diff(offsets).tobytes())
                text.update(memoryview(data)[offsets[0]:offsets[-1]] if data is not None else b"")
    h = hashlib.sha256(CACHE_FORMAT)
    h.update(_tokenizer_identity(tokenizer))
    h.update(repr((tuple(text_columns), max_seq_length, token_type_ids, len(ds))).encode())
    h.update(sizes.digest() + text.digest())
    return h.hexdigest()[:24]


def _tokenizer_identity(tokenizer) -> bytes:
    """The tokenizer's definition, without the truncation and padding that its last call left set."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    return json.dumps({k: v for k, v in spec.items() if k not in ("truncation", "padding")}, sort_keys=True).encode()


def tokenize_split(ds: datasets.Dataset, text_columns, tokenizer, max_seq_length: int,
                   cache_dir: Optional[str] = None, token_type_ids: bool = True) -> TokenizedSplit:
    """Tokenize in batches with the fast tokenizer, cached under cache_dir by content, tokenizer and length.

    Pairs use the tokenizer's own template (BERT's [SEP], RoBERTa's </s></s>); `token_type_ids` only for
    model families that read them."""
    cache = pathlib.Path(cache_dir or os.environ.get("FLAXFT_CACHE", pathlib.Path.home() / ".cache" / "flaxft"))
    cache = cache / "tokenized"
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{_cache_key(ds, text_columns, tokenizer, max_seq_length, token_type_ids)}.tokens.arrow"
    columns = ("input_ids", "token_type_ids") if token_type_ids else ("input_ids",)
    try:
        with filelock.FileLock(str(path) + ".lock"):  # one writer; the others wait here, then map its file
            if not path.is_file():
                _write_tokens(path, ds, text_columns, tokenizer, max_seq_length, columns)
        tokens = _map_tokens(path)
    except OSError as e:
        if not storage.disk_full(e):
            raise
        tokens = _tokens_in_memory(ds, text_columns, tokenizer, max_seq_length, columns)
        log.warning("%s; tokenized in memory instead (free space there or set data.cache_dir to cache it)",
                    storage.no_space(cache, "the tokenization cache", sum(t.nbytes for t in tokens.values())))
    offsets = tokens["input_ids"].offsets.to_numpy()
    return TokenizedSplit(ids=tokens["input_ids"].values.to_numpy(),
                          type_ids=tokens["token_type_ids"].values.to_numpy() if token_type_ids else None,
                          offsets=offsets, labels=label_array(ds), pad_id=tokenizer.pad_token_id or 0)


def label_array(ds: datasets.Dataset) -> np.ndarray:
    """The "label" column as int32 class ids, float32 targets or [n, labels] float32 multi-hot rows (read
    column-wise: a datasets Column formats row by row)."""
    column = ds.with_format("arrow")["label"].combine_chunks()
    if pa.types.is_fixed_size_list(column.type):
        return column.flatten().to_numpy().astype(np.float32).reshape(len(column), column.type.list_size)
    labels = column.to_numpy(zero_copy_only=False)
    return labels.astype(np.float32) if labels.dtype.kind == "f" else labels.astype(np.int32)


def _write_tokens(path: pathlib.Path, ds: datasets.Dataset, text_columns, tokenizer, max_seq_length: int,
                  columns: tuple[str, ...]) -> None:
    """Tokenize `ds` into the cache file `path`: token values streamed to scratch files batch by batch (host
    memory stays at one batch), then written as one record batch and renamed into place."""
    from tqdm.auto import tqdm

    scratch = {c: path.with_name(f"{path.name}.{c}.{os.getpid()}.tmp") for c in columns}
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    lengths = np.zeros(len(ds), np.int64)
    try:
        with contextlib.ExitStack() as stack:
            sinks = {c: stack.enter_context(open(scratch[c], "wb")) for c in columns}
            bar = stack.enter_context(tqdm(total=len(ds), desc="tokenizing", unit="examples", mininterval=2.0,
                                           disable=len(ds) < 10 * BATCH))
            start = 0
            for batch_lengths, values in _encoded_batches(ds, text_columns, tokenizer, max_seq_length, columns):
                n = len(batch_lengths)
                lengths[start:start + n] = batch_lengths
                for c in columns:
                    sinks[c].write(values[c].tobytes())
                start += n
                bar.update(n)
        offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]))
        table = pa.table({c: pa.LargeListArray.from_arrays(offsets, pa.array(_scratch_values(scratch[c])))
                          for c in columns})
        with pa.OSFile(str(partial), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        del table
        os.replace(partial, path)  # readers never see a half-written file
    finally:
        for f in (*scratch.values(), partial):
            f.unlink(missing_ok=True)
    log.info("tokenized %d examples (%d tokens) into %s", len(ds), int(lengths.sum()), path)


def _encoded_batches(ds: datasets.Dataset, text_columns, tokenizer, max_seq_length: int, columns: tuple[str, ...]):
    """(token counts, {column: flat int32 values}) per batch of BATCH rows, in order."""
    for batch in ds.select_columns(list(text_columns)).with_format("arrow").iter(batch_size=BATCH):
        enc = tokenizer(*[batch.column(c).to_pylist() for c in text_columns], truncation=True,
                        max_length=max_seq_length, return_attention_mask=False,
                        return_token_type_ids="token_type_ids" in columns)
        lengths = np.fromiter((len(x) for x in enc["input_ids"]), np.int64, batch.num_rows)
        count = int(lengths.sum())
        yield lengths, {c: np.fromiter(itertools.chain.from_iterable(enc[c]), np.int32, count) for c in columns}


def _tokens_in_memory(ds: datasets.Dataset, text_columns, tokenizer, max_seq_length: int,
                      columns: tuple[str, ...]) -> dict[str, pa.LargeListArray]:
    """The token columns of `ds` built in memory (the cache folder had no room)."""
    parts = list(_encoded_batches(ds, text_columns, tokenizer, max_seq_length, columns))
    offsets = pa.array(np.concatenate([[0], np.cumsum(np.concatenate([p[0] for p in parts] or [np.zeros(0, np.int64)]))]))
    return {c: pa.LargeListArray.from_arrays(offsets, pa.array(np.concatenate([p[1][c] for p in parts] or
                                                                              [np.zeros(0, np.int32)])))
            for c in columns}


def _scratch_values(file: pathlib.Path) -> np.ndarray:
    return np.memmap(file, np.int32, "r") if file.stat().st_size else np.zeros(0, np.int32)


def _map_tokens(path: pathlib.Path) -> dict[str, pa.LargeListArray]:
    """The cache file's token columns, memory-mapped (one chunk each: numpy views, no copy)."""
    table = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
    return {name: column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()  # 0 chunks: no rows
            for name, column in zip(table.column_names, table.columns)}
