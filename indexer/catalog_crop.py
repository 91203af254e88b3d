"""`model.crop_fraction: auto` on a library indexed before the crop was a setting keeps that library's crop.

Such a library was indexed with the whole centre square (crop 1.0), and its model id carries no
crop. Taking `auto` at its word there would make every command and server refuse the library
(another crop is another model) right after an upgrade. So `auto` means the evaluation crop for
a new library, and the crop a library was indexed with for an existing one; to move an existing
library to the evaluation crop, set the fraction explicitly and run `lookalike index --reindex`.

Light on purpose (no NumPy, FAISS or TensorFlow): every CLI command loads its settings through it,
including `lookalike search` when it only asks a running server.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from indexer.settings import Settings

log = logging.getLogger(__name__)

# The published index's manifest (storage.vector_index.MANIFEST, read here without importing FAISS).
MANIFEST_PATH = Path("index") / "manifest.json"


def indexed_model_id(data_dir: Path) -> str | None:
    """The model id of the library's published vectors, or None when nothing is published (or it is unreadable)."""
    try:
        manifest = json.loads((data_dir / MANIFEST_PATH).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    model_id = manifest.get("model_id") if isinstance(manifest, dict) else None
    return model_id if isinstance(model_id, str) else None


def keep_catalog_crop(settings: Settings) -> Settings:
    """The settings, with `auto` resolved to 1.0 when the library's vectors were made from the whole square."""
    model = settings.model
    if model.crop_fraction != "auto" or model.effective_crop_fraction() == 1.0:
        return settings
    indexed = indexed_model_id(settings.storage.data_dir)
    if indexed is None or "/crop=" in indexed or not indexed.endswith(f"@{model.image_size}"):
        return settings
    log.info("this library was indexed with the whole centre square: model.crop_fraction auto keeps it (set "
             "model.crop_fraction: %.6g and run 'lookalike index --reindex' for the evaluation crop)",
             model.effective_crop_fraction())
    return settings.model_copy(update={"model": model.model_copy(update={"crop_fraction": 1.0})})
