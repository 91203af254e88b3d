"""The reindex's staging tables on SQLite and PostgreSQL: stage beside the live vectors, resume, swap at once."""

from __future__ import annotations

import numpy as np
from helpers import CATALOG_MODEL, new_image, ref, unit

from storage import staging
from storage.catalog import Catalog
from storage.staging import NOT_REINDEXED, RETRY_MTIME, StagedVector

NEW_MODEL = "new-model@64"


def test_stage_then_swap_switches_everything_at_once(catalog: Catalog) -> None:
    ids, _ = catalog.apply([new_image(i) for i in range(1, 6)],
                           [ref(f"/lib/{i}.jpg", i) for i in range(1, 6)] + [ref("/lib/copy-of-5.jpg", 5)])
    assert [t.image_id for t in staging.unstaged(catalog, NEW_MODEL)] == ids
    assert [f.path for f in list(staging.unstaged(catalog, NEW_MODEL))[4].files] == ["/lib/5.jpg",
                                                                                     "/lib/copy-of-5.jpg"]
    staging.stage(catalog, "abandoned@1", [StagedVector(ids[0], unit(99), ((7, 0.5),))])
    assert staging.discard_other_models(catalog, NEW_MODEL) == 1

    new_vectors = {i: unit(100 + i) for i in ids[:4]}
    staging.stage(catalog, NEW_MODEL, [StagedVector(i, new_vectors[i], ((40 + i, 0.8), (3, 0.1)))
                                       for i in ids[:2]])
    staging.stage(catalog, NEW_MODEL, [StagedVector(i, new_vectors[i], ((40 + i, 0.8),)) for i in ids[2:4]])
    # Nothing live changed yet; what is left to do is what is not staged.
    assert catalog.model_ids() == {CATALOG_MODEL} and staging.staged_count(catalog, NEW_MODEL) == 4
    np.testing.assert_array_equal(catalog.embedding(ids[0]), unit(1))
    assert [t.image_id for t in staging.unstaged(catalog, NEW_MODEL)] == [ids[4]]
    assert staging.max_staged_id(catalog, NEW_MODEL) == ids[3]
    staged_ids = np.concatenate([i for i, _ in staging.iter_staged(catalog, NEW_MODEL)]).tolist()
    assert staged_ids == ids[:4]

    result = staging.swap(catalog, NEW_MODEL, {ids[4]: "cannot read file: Permission denied"})
    assert (result.switched, result.dropped) == (4, 1)
    assert catalog.model_ids() == {NEW_MODEL} and catalog.count_images() == 4
    for i in ids[:4]:
        np.testing.assert_array_equal(catalog.embedding(i), new_vectors[i])
    assert catalog.get_images([ids[0]])[ids[0]].predictions[0] == (41, 0.8)
    assert catalog.get_images([ids[2]])[ids[2]].predictions == ((43, 0.8),)
    rejected = {r.path: r for r in catalog.rejections()}
    assert sorted(rejected) == ["/lib/5.jpg", "/lib/copy-of-5.jpg"]
    assert rejected["/lib/5.jpg"].kind == NOT_REINDEXED and "Permission denied" in rejected["/lib/5.jpg"].reason
    assert rejected["/lib/5.jpg"].mtime_ns == RETRY_MTIME  # the next scan of its folder tries it again
    assert staging.staged_count(catalog) == 0


def test_deleting_an_image_drops_its_staged_vector(catalog: Catalog) -> None:
    ids, _ = catalog.apply([new_image(1), new_image(2)], [ref("/lib/1.jpg", 1), ref("/lib/2.jpg", 2)])
    staging.stage(catalog, NEW_MODEL, [StagedVector(i, unit(i + 10), ((1, 0.9),)) for i in ids])
    catalog.apply(removed_paths=["/lib/2.jpg"])
    assert staging.staged_count(catalog, NEW_MODEL) == 1
    # Staging an image deleted meanwhile is skipped, not an error.
    staging.stage(catalog, NEW_MODEL, [StagedVector(ids[1], unit(5), ())])
    assert staging.staged_count(catalog, NEW_MODEL) == 1
