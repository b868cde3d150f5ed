"""Resolve a model name to a local folder: a path as-is, a Hub id through the local cache or a fast download.

Offline machines (no network, HF_HUB_OFFLINE=1, locked-down TPU VMs) get a one-line error within
seconds instead of a minute of HTTP retries.
"""

from __future__ import annotations

import os
import pathlib
import re
import socket
import threading
import urllib.parse
import urllib.request

import huggingface_hub

from flaxft import storage
from flaxft.errors import FlaxftError

# What a checkpoint folder of any supported family needs: weights (safetensors or torch, sharded or not) and
# the tokenizer's files (WordPiece vocab.txt, BPE vocab.json + merges.txt, sentencepiece *.model).
MODEL_FILES = ["config.json", "*.safetensors", "model.safetensors.index.json", "pytorch_model*.bin",
               "pytorch_model.bin.index.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
               "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt", "*.model"]


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hub endpoint (HF_ENDPOINT; via the https proxy if one is set) opens
    within `timeout` seconds. False in offline mode (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE).

    Probing first avoids `load_dataset`'s retry loop, which takes ~25 s to give up without a network.
    """
    if huggingface_hub.constants.HF_HUB_OFFLINE or os.environ.get("HF_DATASETS_OFFLINE", "0").lower() in ("1", "true"):
        return False
    url = urllib.parse.urlsplit(huggingface_hub.constants.ENDPOINT)
    proxy = urllib.request.getproxies().get(url.scheme)
    if proxy and not urllib.request.proxy_bypass(url.hostname or ""):
        url = urllib.parse.urlsplit(proxy)
    port = url.port or (443 if url.scheme == "https" else 80)
    result = []

    def connect():
        try:
            socket.create_connection((url.hostname, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            pass

    # A thread, because DNS lookups ignore socket timeouts; daemon, so a hung lookup never blocks exit.
    probe = threading.Thread(target=connect, daemon=True)
    probe.start()
    probe.join(timeout)
    return bool(result)


_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


def is_hub_id(name: str) -> bool:
    """Whether `name` (a model or a data path) means a Hub repository: `name` or `org/name`, not written as a
    path (./, /, ~, gs://) and not an existing local file or folder."""
    return not (storage.is_remote(name) or name.startswith((".", "/", "~")) or pathlib.Path(name).expanduser().exists()
                or not _HUB_ID.match(name))


def resolve_model(name_or_path: str) -> pathlib.Path:
    """A local checkpoint folder for `model.name_or_path`."""
    path = pathlib.Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if not is_hub_id(name_or_path):
        raise FlaxftError(f"model.name_or_path: folder '{name_or_path}' does not exist; "
                          "give a checkpoint folder with config.json and model.safetensors, or a Hub id")
    online = hub_reachable()
    try:
        return pathlib.Path(huggingface_hub.snapshot_download(
            name_or_path, allow_patterns=MODEL_FILES, local_files_only=not online))
    except Exception as e:  # noqa: BLE001 - the Hub client raises many kinds; all mean "not available"
        why = "the Hugging Face Hub is unreachable and it is not in the local cache" if not online else str(e).splitlines()[0]
        raise FlaxftError(f"cannot get model '{name_or_path}' ({why}); "
                          "pass a local checkpoint folder: model.name_or_path=/path/to/model") from None
