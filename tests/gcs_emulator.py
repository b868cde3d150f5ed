"""gcp-storage-emulator, plus the x-goog-generation headers that real GCS sends with every download.

TensorStore (Orbax's array writer) reads an object's generation from that header to update it safely;
the emulator leaves it out. Usage: python tests/gcs_emulator.py start --port N --in-memory ...
"""

import sys

from gcp_storage_emulator.handlers import objects  # patched before the server module binds its routes

_download = objects.download


def download(request, response, storage, *args, **kwargs):
    try:
        obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
        response["x-goog-generation"] = str(obj["generation"])
        response["x-goog-metageneration"] = str(obj["metageneration"])
    except Exception:  # noqa: BLE001 -- a missing object: the original handler answers 404
        pass
    return _download(request, response, storage, *args, **kwargs)


objects.download = download

if __name__ == "__main__":
    from gcp_storage_emulator.__main__ import main

    main(sys.argv[1:])
