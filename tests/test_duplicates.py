"""`lookalike duplicates`: exact copies and near-duplicates, found through the index."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import BLUE, GREEN, RED, colour_image, env_for, write_image

from lookalike.cli import cli
from storage.catalog import Catalog, FileRef, NewImage
from storage.duplicates import exact_groups, near_groups
from storage.vector_index import VectorIndex


def test_duplicates_command_finds_copies_and_resized_versions(runner: CliRunner, tmp_path: Path,
                                                               tf1_module: Path) -> None:
    root = tmp_path / "photos"
    original = colour_image(RED, size=(320, 240), seed=1, accent=(250, 200, 40))
    write_image(root / "trip" / "beach.png", original)
    (root / "backup").mkdir()
    shutil.copy(root / "trip" / "beach.png", root / "backup" / "beach-copy.png")
    os.utime(root / "backup" / "beach-copy.png", ns=(1_500_000_000 * 10**9, 1_500_000_000 * 10**9))  # the oldest
    write_image(root / "phone" / "beach-small.jpg", original.resize((160, 120)), quality=90)
    write_image(root / "other" / "forest.png", colour_image(GREEN, size=(320, 240), seed=2, accent=(20, 90, 20)))
    write_image(root / "other" / "sea.png", colour_image(BLUE, size=(320, 240), seed=3, accent=(200, 200, 250)))
    env = env_for(tmp_path / "data", tf1_module)
    indexed = runner.invoke(cli, ["index", str(root)], env=env)
    assert indexed.exit_code == 0, indexed.output

    result = runner.invoke(cli, ["duplicates", "--threshold", "0.999", "--json"], env=env)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    (exact,) = report["exact"]
    assert sorted(Path(p).name for p in exact["paths"]) == ["beach-copy.png", "beach.png"]
    (near,) = report["near"]
    names = sorted(Path(p).name for image in near["images"] for p in image["paths"])
    assert names == ["beach-copy.png", "beach-small.jpg", "beach.png"]
    assert all(image["score"] >= 0.999 for image in near["images"])
    # The suggested copy to keep: of identical files the oldest; of near-duplicates the most pixels.
    assert Path(exact["keep"]).name == "beach-copy.png" and exact["width"] == 320 and exact["format"] == "PNG"
    assert [(Path(f["path"]).name, f["suggested"]) for f in exact["files"]] == [
        ("beach-copy.png", "keep"), ("beach.png", "remove")]
    assert exact["files"][0]["modified"] == "2017-07-14T02:40:00Z"
    kept = next(image for image in near["images"] if image["id"] == near["keep"])
    assert (kept["width"], kept["height"], kept["suggested"]) == (320, 240, "keep")
    small = next(image for image in near["images"] if image["id"] != near["keep"])
    assert (small["width"], small["height"], small["format"], small["suggested"]) == (160, 120, "JPEG", "remove")
    assert small["size"] == (root / "phone" / "beach-small.jpg").stat().st_size

    human = runner.invoke(cli, ["duplicates", "--threshold", "0.999"], env=env)
    assert "same content" in human.stdout and "near-duplicates (each at cosine >= 0.999" in human.stdout
    assert re.search(r"^  keep  .*beach-copy\.png$", human.stdout, re.M)
    assert re.search(r"^  1\.000        160x120  .*beach-small\.jpg$", human.stdout, re.M)
    assert "1 group(s) of identical files, 1 group(s) of near-duplicates" in human.output
    assert runner.invoke(cli, ["duplicates", "--threshold", "1.5"], env=env).exit_code == 2
    # Without --threshold, search.dedupe_threshold decides.
    configured = runner.invoke(cli, ["duplicates", "--json"],
                               env={**env, "LOOKALIKE_SEARCH__DEDUPE_THRESHOLD": "0.999"})
    assert json.loads(configured.stdout) == report
    assert json.loads(runner.invoke(cli, ["duplicates", "--json"], env=env).stdout)["threshold"] == 0.95


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    v = rng.normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize("factory", ["Flat", "IVF8,Flat", "HNSW16"])
def test_near_groups_match_brute_force(tmp_path: Path, factory: str) -> None:
    rng = np.random.default_rng(0)
    d = 32
    base = _unit(rng, 60, d)
    # Every third vector gets a close twin, and one chain a->b->c links three.
    twins = base[::3] + rng.normal(scale=0.02, size=base[::3].shape).astype(np.float32)
    vectors = np.concatenate([base, twins / np.linalg.norm(twins, axis=1, keepdims=True)])
    catalog = Catalog(f"sqlite:///{tmp_path / 'c.db'}")
    images = [NewImage(f"{i:064x}", 1, 1, "PNG", "m", v, [(0, 1.0)]) for i, v in enumerate(vectors)]
    files = [FileRef(f"/lib/{i}.png", "/lib", 1, 1, f"{i:064x}") for i in range(len(vectors))]
    ids, _ = catalog.apply(new_images=images, files=files)
    index = VectorIndex(d, "m", factory=factory)
    if not index.is_trained:
        index.train(vectors)
    index.add(np.asarray(ids), vectors)

    threshold = 0.95
    sims = vectors @ vectors.T
    expected = {frozenset({ids[i], ids[j]}) for i in range(len(ids)) for j in range(i + 1, len(ids))
                if sims[i, j] >= threshold}
    groups = near_groups(catalog, index, threshold, batch=16)
    found_pairs = {frozenset({a.image_id, b.image_id}) for g in groups for a in g.members for b in g.members
                   if a.image_id < b.image_id}
    assert expected and expected <= found_pairs
    assert len(groups) == len(expected)  # the twins are far apart from each other: one pair per group
    assert exact_groups(catalog) == []


def test_a_chain_groups_members_whose_closest_link_meets_the_threshold(tmp_path: Path) -> None:
    """a~b and b~c but not a~c: one group, and each member's shown similarity is its closest link."""
    angles = np.radians([0.0, 15.0, 30.0])
    vectors = np.zeros((3, 8), np.float32)
    vectors[:, 0], vectors[:, 1] = np.cos(angles), np.sin(angles)
    catalog = Catalog(f"sqlite:///{tmp_path / 'c.db'}")
    images = [NewImage(f"{i:064x}", 1, 1, "PNG", "m", v, [(0, 1.0)]) for i, v in enumerate(vectors)]
    ids, _ = catalog.apply(new_images=images, files=[FileRef(f"/lib/{i}.png", "/lib", 1, 1, f"{i:064x}")
                                                    for i in range(3)])
    index = VectorIndex(8, "m")
    index.add(np.asarray(ids), vectors)
    threshold = float(np.cos(np.radians(16.0)))
    (group,) = near_groups(catalog, index, threshold)
    assert [m.image_id for m in group.members] == ids
    assert all(m.link >= threshold for m in group.members)
    assert group.members[2].score == pytest.approx(np.cos(np.radians(30.0)), abs=1e-5)
    assert group.members[2].score < threshold
    assert group.to_json()["images"][2]["link"] == pytest.approx(np.cos(np.radians(15.0)), abs=1e-5)


def test_groups_suggest_the_copy_to_keep(tmp_path: Path) -> None:
    """Near-duplicates: most pixels, then most bytes per pixel, then oldest; identical files: the oldest."""
    base = np.zeros(8, np.float32)
    base[0] = 1.0
    vectors = np.stack([base] * 4)
    vectors[3] = np.roll(base, 1)  # far from the others
    catalog = Catalog(f"sqlite:///{tmp_path / 'c.db'}")
    sizes = [(100, 100, 1_000), (100, 100, 3_000), (50, 50, 9_000), (100, 100, 1)]
    images = [NewImage(f"{i:064x}", w, h, "JPEG", "m", v, [(0, 1.0)])
              for i, ((w, h, _), v) in enumerate(zip(sizes, vectors, strict=True))]
    files = [FileRef(f"/lib/{i}.jpg", "/lib", size, 10 - i, f"{i:064x}") for i, (_, _, size) in enumerate(sizes)]
    files.append(FileRef("/lib/old-copy-of-1.jpg", "/lib", 3_000, 1, f"{1:064x}"))
    ids, _ = catalog.apply(new_images=images, files=files)
    index = VectorIndex(8, "m")
    index.add(np.asarray(ids), vectors)

    (near,) = near_groups(catalog, index, 0.99)
    assert [m.image_id for m in near.members] == ids[:3]
    assert near.keep == ids[1] and [m.suggested for m in near.members] == ["remove", "keep", "remove"]
    assert near.members[1].mtime_ns == 1  # an image's age is its oldest file's
    (exact,) = exact_groups(catalog)
    assert exact.keep == "/lib/old-copy-of-1.jpg"
    assert exact.to_json()["files"] == [
        {"path": "/lib/1.jpg", "modified": "1970-01-01T00:00:00Z", "suggested": "remove"},
        {"path": "/lib/old-copy-of-1.jpg", "modified": "1970-01-01T00:00:00Z", "suggested": "keep"}]
