"""What storage needs to know to choose and query an index, apart from FAISS: the settings read its
defaults at every start of the command line, which must not pay for importing FAISS."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class IndexConfig:
    """What storage needs to know to choose and query an index (built from the settings by callers).

    These defaults are the storage.* settings' defaults too: indexer/settings.py reads them from here."""

    factory: str = "auto"
    memory_budget_bytes: int = 2048 * 2**20
    exact_max_vectors: int = 50_000
    nprobe: int = 0  # 0: the nprobe measured when the generation was built
    ef_search: int = 64
    exact_budget_ms: float = 10.0
    recall_target: float = 0.98
