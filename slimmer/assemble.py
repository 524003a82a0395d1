"""Assemble the new image: its config, and the archive `docker load` reads.

The config is carried through as a dict, so keys slimmer does not know
survive. The archive `docker load` reads is made by destinations.py.
"""

from __future__ import annotations

import copy
import hashlib
import json
import tarfile

from slimmer import __version__

BLOCK = tarfile.BLOCKSIZE


def new_config(source: dict, diff_id: str, summary: str) -> dict:
    """The source config with one layer and one more history entry.

    OCI image spec, "Image Configuration": `rootfs.diff_ids` lists the
    uncompressed layer digests, and history entries marked `empty_layer`
    own no layer, so the old history stays readable without its layers.
    """
    config = copy.deepcopy(source)
    config["rootfs"] = {"type": "layers", "diff_ids": [diff_id]}
    history = [dict(item, empty_layer=True) for item in config.get("history", [])]
    history.append(
        {
            # The source's own date keeps the result reproducible: the
            # same image and profiles give the same image id.
            "created": source.get("created", "1970-01-01T00:00:00Z"),
            "created_by": f"slimmer {__version__}: {summary}",
            "comment": "squashed by slimmer; earlier entries own no layer",
        }
    )
    config["history"] = history
    return config


def config_bytes(config: dict) -> bytes:
    return json.dumps(config, separators=(",", ":"), sort_keys=True).encode()


def image_id(config_blob: bytes) -> str:
    return f"sha256:{hashlib.sha256(config_blob).hexdigest()}"
