"""Collapse near-duplicate search results into the best-scoring member of each group."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from search_api.neighbours import Neighbour


def collapse_near_duplicates(hits: Sequence[Neighbour], vectors: Mapping[int, np.ndarray],
                             threshold: float) -> list[Neighbour]:
    """Hits best first, each carrying the ids of the later hits folded into it.

    Groups are formed greedily in score order: a hit joins the first kept hit whose vector has
    cosine similarity >= `threshold` with its own (vectors are unit length), else it is kept.
    Exact duplicates (identical content) are already one catalog image with several paths.
    """
    kept: list[Neighbour] = []
    members: list[list[int]] = []
    leaders: list[np.ndarray] = []  # vectors of the kept hits that have one
    leader_group: list[int] = []  # index into `kept` of each leader
    for hit in hits:
        vector = vectors.get(hit.record.id)
        if vector is not None and leaders:
            similarity = np.stack(leaders) @ vector
            best = int(np.argmax(similarity))
            if similarity[best] >= threshold:
                members[leader_group[best]].append(hit.record.id)
                continue
        if vector is not None:
            leaders.append(vector)
            leader_group.append(len(kept))
        kept.append(hit)
        members.append([])
    return [dataclasses.replace(hit, duplicates=tuple(ids)) for hit, ids in zip(kept, members, strict=True)]
