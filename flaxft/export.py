"""Write a trained model as a Hugging Face folder that transformers (PyTorch) and flaxft both load.

    export/
      config.json          the source model's config + architectures, num_labels, id2label/label2id, problem_type
      model.safetensors    the family's *ForSequenceClassification weights (float32, torch layout)
      tokenizer.json ...   the tokenizer the model was trained with
      flaxft.json          what flaxft.predict needs beyond that: task, text columns, buckets, config, metrics

The folder may be on Cloud Storage (gs://): it is written locally, then uploaded.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile
from typing import Callable, Optional

import jax
import safetensors.numpy

from flaxft import storage
from flaxft.errors import FlaxftError
from flaxft.losses import MULTI_LABEL, REGRESSION, SINGLE_LABEL
from flaxft.model import EncoderConfig, family_of, params_to_state_dict
from flaxft.model.hf_files import SAFE_WEIGHTS
from flaxft.monitoring import Preempted, sigterm_hook

EXPORT = "export"
INFO_FILE = "flaxft.json"


def hf_config(model_config: EncoderConfig, label_names: Optional[tuple[str, ...]], problem_type: str) -> dict:
    """config.json for the family's ``*ForSequenceClassification`` with the run's labels and problem type (which
    picks transformers' loss)."""
    names = ["LABEL_0"] if problem_type == REGRESSION else list(label_names)
    return {
        **model_config.to_hf(),
        "architectures": [family_of(model_config).architectures[model_config.model_type]],
        "num_labels": len(names),
        "id2label": {str(i): n for i, n in enumerate(names)},
        "label2id": {n: i for i, n in enumerate(names)},
        "problem_type": problem_type,
        "dtype": "float32",
    }


def read_labels(folder: pathlib.Path) -> tuple[Optional[tuple[str, ...]], str, int]:
    """(label names, problem type, num_labels) from a Hugging Face config.json."""
    path = pathlib.Path(folder) / "config.json"
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise FlaxftError(f"'{path}' is missing or not JSON ({e}); point at an exported model folder") from None
    id2label = d.get("id2label") or {}
    num_labels = len(id2label) or int(d.get("num_labels", 2))
    if d.get("problem_type") == REGRESSION or num_labels == 1:
        return None, REGRESSION, 1
    names = [id2label.get(str(i), id2label.get(i, f"LABEL_{i}")) for i in range(num_labels)]
    problem_type = MULTI_LABEL if d.get("problem_type") == MULTI_LABEL else SINGLE_LABEL
    return tuple(names), problem_type, num_labels


def export_model(folder, params, model_config: EncoderConfig, *, label_names, problem_type: str,
                 tokenizer, info: dict, stop: Optional[Callable[[], bool]] = None):
    """Write `folder` (a local path or gs:// URL), replacing an older export only once the new one is
    complete. Process 0 writes. `stop()` true after the weights (a SIGTERM) abandons the new folder and raises
    Preempted; a full disk abandons it too (one FlaxftError): either way the older export stays as it was."""
    if jax.process_count() > 1:  # gather sharded weights to every host; process 0 writes them
        from jax.experimental import multihost_utils

        params = multihost_utils.process_allgather(params, tiled=True)
    state_dict = params_to_state_dict(params, model_config)
    if jax.process_index() != 0:
        return folder
    folder = storage.path(folder)
    stop = stop or (lambda: False)

    def write(into: pathlib.Path) -> None:
        into.mkdir(parents=True)
        sigterm_hook("export")  # (tests: a SIGTERM while the export is written)
        # "format": "pt" is what transformers expects in a safetensors header.
        safetensors.numpy.save_file(state_dict, str(into / SAFE_WEIGHTS), metadata={"format": "pt"})
        if stop():
            raise Preempted("during the export")
        (into / "config.json").write_text(json.dumps(hf_config(model_config, label_names, problem_type), indent=2) + "\n")
        tokenizer.save_pretrained(str(into))
        (into / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")

    def write_whole(into: pathlib.Path) -> None:
        needed = sum(v.nbytes for v in state_dict.values())
        try:
            with storage.room_for(into.parent, f"the export {folder}", needed):
                write(into)
        except BaseException:
            shutil.rmtree(into, ignore_errors=True)  # never left for a reader (or the disk) to find
            raise
        if stop():
            shutil.rmtree(into, ignore_errors=True)
            raise Preempted("during the export")

    if storage.is_remote(folder):
        # No folder renames on object stores: config.json (what makes a folder a model) goes away first
        # and comes back last, so a reader never takes a half-uploaded folder for a model.
        with tempfile.TemporaryDirectory(prefix="flaxft-export-") as local:
            write_whole(pathlib.Path(local) / EXPORT)
            (folder / "config.json").unlink(missing_ok=True)
            storage.upload_tree(pathlib.Path(local) / EXPORT, folder, last=("config.json",))
        return folder
    tmp, old = folder.with_name(folder.name + ".tmp"), folder.with_name(folder.name + ".old")
    for stale in (tmp, old):
        shutil.rmtree(stale, ignore_errors=True)
    write_whole(pathlib.Path(tmp))
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder
