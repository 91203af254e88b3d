"""The Ray path of `lookalike index` against the single-machine indexer, on a local Ray and PostgreSQL."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import ray
import sqlalchemy as sa
from helpers import GREEN, POSTGRES_URL, colour_image, make_colour_library, make_settings, postgres_answers, write_image
from sqlalchemy.exc import IntegrityError

from indexer.batch import Batch
from indexer.distributed import RayIndexer, prepare_batch
from indexer.model import Embedder, configured_model_id
from indexer.pipeline import IndexReport, LibraryIndexer
from indexer.prepare import PrepareConfig
from indexer.ray_cluster import ClusterError, ClusterInfo, check_address, check_catalog_for_cluster, ray_cluster
from indexer.scan import FoundFile
from indexer.settings import Settings
from lookalike.cli import cli
from storage.catalog import Catalog, FileRef, NewImage
from storage.vector_index import IndexStore
from storage.verify import verify

pytestmark = pytest.mark.ray

VECTOR_TOLERANCE = 1e-5



@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture
def new_database() -> Iterator[Callable[[], str]]:
    """Makes empty PostgreSQL databases of their own (other suites clear the shared one), dropped after."""
    if not postgres_answers():
        pytest.skip(f"no PostgreSQL server answers at {POSTGRES_URL}")
    admin = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    made: list[str] = []

    def make() -> str:
        name = f"lookalike_ray_{uuid.uuid4().hex[:12]}"
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        made.append(name)
        return sa.make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)

    yield make
    with admin.connect() as conn:
        for name in made:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def single_machine_run(settings: Settings, root: Path, reindex: bool = False) -> IndexReport:
    catalog = Catalog(settings.storage.resolved_database_url())
    try:
        indexer = LibraryIndexer(settings, catalog, IndexStore(settings.storage.data_dir / "index"),
                                 configured_model_id(settings.model),
                                 lambda: Embedder.from_settings(settings.model))
        return indexer.run([str(root)], reindex=reindex)
    finally:
        catalog.close()


def ray_run(settings: Settings, root: Path, reindex: bool = False) -> IndexReport:
    catalog = Catalog(settings.storage.resolved_database_url())
    try:
        with ray_cluster("local") as cluster:
            indexer = RayIndexer(settings, catalog, IndexStore(settings.storage.data_dir / "index"),
                                 configured_model_id(settings.model), cluster)
            return indexer.run([str(root)], reindex=reindex)
    finally:
        catalog.close()


def catalog_contents(settings: Settings) -> dict[str, object]:
    """Everything a run decides, keyed by content: files, size and format, predictions, vectors, rejections."""
    catalog = Catalog(settings.storage.resolved_database_url())
    try:
        vectors = {int(i): v for ids, vs in catalog.iter_embeddings() for i, v in zip(ids, vs, strict=True)}
        records = catalog.get_images(sorted(vectors))
        images = {
            r.content_hash: {"paths": r.paths, "size": (r.width, r.height, r.format),
                             "classes": [c for c, _ in r.predictions], "probabilities": [p for _, p in r.predictions],
                             "vector": vectors[r.id]}
            for r in records.values()
        }
        mid = configured_model_id(settings.model)
        report = verify(catalog, IndexStore(settings.storage.data_dir / "index"), mid)
        assert report.ok, report.problems  # the published index holds exactly the catalog's vectors
        rejected = [(r.path, r.kind) for r in catalog.rejections()]
    finally:
        catalog.close()
    return {"images": images, "rejected": rejected}


def assert_same_catalog(expected: dict[str, object], actual: dict[str, object]) -> None:
    want, got = expected["images"], actual["images"]
    assert isinstance(want, dict) and isinstance(got, dict)
    assert sorted(got) == sorted(want)
    for digest, image in want.items():
        other = got[digest]
        assert other["paths"] == image["paths"] and other["size"] == image["size"], digest
        assert other["classes"] == image["classes"], digest
        np.testing.assert_allclose(other["probabilities"], image["probabilities"], atol=VECTOR_TOLERANCE)
        np.testing.assert_allclose(other["vector"], image["vector"], atol=VECTOR_TOLERANCE)
    assert actual["rejected"] == expected["rejected"]


def counts(report: IndexReport) -> dict[str, object]:
    summary = report.to_json()
    return {k: summary[k] for k in ("indexed", "linked", "unchanged", "skipped", "removed", "failed", "found")}


def test_ray_run_matches_the_single_machine_run_then_follows_changes_the_same_way(
        local_ray: None, new_database: Callable[[], str], tmp_path: Path, tf1_module: Path) -> None:
    library = make_colour_library(tmp_path / "library")
    shutil.copy(library / "red" / "red1.jpg", library / "red" / "copy-of-red1.jpg")  # one content, two files
    (library / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    single = make_settings(tmp_path / "single", tf1_module, storage={"database_url": new_database()})
    spread = make_settings(tmp_path / "ray", tf1_module, storage={"database_url": new_database()})

    first_single, first_ray = single_machine_run(single, library), ray_run(spread, library)
    assert counts(first_ray) == counts(first_single)
    assert counts(first_ray) == {"indexed": 14, "linked": 1, "unchanged": 0, "skipped": 0, "removed": 0,
                                 "failed": 1, "found": 16}
    assert first_ray.failures[0]["path"].endswith("broken.jpg") and first_ray.failures[0]["kind"]
    ray_contents = catalog_contents(spread)
    assert_same_catalog(catalog_contents(single), ray_contents)
    assert ray_contents["rejected"] == [(str((library / "broken.jpg").resolve()), first_ray.failures[0]["kind"])]
    assert len(list((tmp_path / "ray" / "thumbnails").rglob("*.webp"))) == 14

    # Moved, changed, deleted, duplicated: the Ray path decides like the single-machine one.
    (library / "red" / "moved").mkdir()
    shutil.move(library / "red" / "red0.jpg", library / "red" / "moved" / "red0.jpg")
    write_image(library / "blue" / "deep" / "blue0.png", colour_image(GREEN, seed=99, accent=(10, 90, 10)))
    (library / "green" / "green0.webp").unlink()
    shutil.copy(library / "red" / "red2.jpg", library / "red2-again.jpg")
    second_single, second_ray = single_machine_run(single, library), ray_run(spread, library)
    assert counts(second_ray) == counts(second_single)
    assert counts(second_ray) == {"indexed": 1, "linked": 2, "unchanged": 12, "skipped": 1, "removed": 2,
                                  "failed": 0, "found": 16}
    assert_same_catalog(catalog_contents(single), catalog_contents(spread))

    # Nothing changed: nothing is read, decoded or embedded.
    again = ray_run(spread, library)
    assert counts(again) == {"indexed": 0, "linked": 0, "unchanged": 15, "skipped": 1, "removed": 0,
                             "failed": 0, "found": 16}


def test_a_reindex_on_ray_builds_beside_and_switches_like_the_single_machine_one(
        local_ray: None, tmp_path: Path, tf1_module: Path, tf2_module: Path) -> None:
    library = make_colour_library(tmp_path / "library")
    runs = {}
    for name, run in (("single", single_machine_run), ("ray", ray_run)):
        run(make_settings(tmp_path / name, tf1_module), library)
        new = make_settings(tmp_path / name, tf2_module)
        report = run(new, library, reindex=True)
        assert (report.reindexed, report.not_reindexed, report.interrupted) == (14, 0, False), name
        runs[name] = catalog_contents(new)  # verified clean, of the new model only
    assert_same_catalog(runs["single"], runs["ray"])


def test_a_reindex_on_ray_reads_again_files_whose_names_the_catalog_escapes(
        local_ray: None, tmp_path: Path, tf1_module: Path, tf2_module: Path) -> None:
    library = tmp_path / "library"
    write_image(library / "back\\slash.png", colour_image(GREEN, seed=1))
    not_utf8 = Path(os.fsdecode(bytes(library) + b"/caf\xe9.png"))
    write_image(not_utf8, colour_image(GREEN, seed=2, accent=(200, 30, 30)))
    ray_run(make_settings(tmp_path / "data", tf1_module), library)
    new = make_settings(tmp_path / "data", tf2_module)
    report = ray_run(new, library, reindex=True)
    assert (report.reindexed, report.not_reindexed, report.interrupted) == (2, 0, False)
    assert len(catalog_contents(new)["images"]) == 2  # verified clean, of the new model only


def batch_of(seed: int, path: str) -> tuple[list[NewImage], list[FileRef]]:
    vector = np.random.default_rng(seed).normal(size=16).astype(np.float32)
    digest = f"{seed:064x}"
    image = NewImage(digest, 64, 48, "JPEG", "m@64", vector / np.linalg.norm(vector), [(1, 0.9), (31, 0.05)])
    return [image], [FileRef(path, "/lib", 100, 1, digest)]


def test_a_retried_batch_whose_rows_landed_is_merged_not_an_error(new_database: Callable[[], str],
                                                                   tmp_path: Path, tf1_module: Path) -> None:
    settings = make_settings(tmp_path / "data", tf1_module, storage={"database_url": new_database()})
    catalog = Catalog(settings.storage.resolved_database_url())
    try:
        images, files = batch_of(1, "/lib/a.jpg")
        catalog.apply(images, files)
        with pytest.raises(IntegrityError):  # what a plain second insert of the same content does
            catalog.apply(images, files)
        cluster = ClusterInfo("local", nodes=1, cpus=2, gpus=0)
        indexer = RayIndexer(settings, catalog, IndexStore(tmp_path / "index"), "m@64", cluster)
        more_images, more_files = batch_of(2, "/lib/b.jpg")
        indexer.writer.commit(Batch(files + more_files + [FileRef("/lib/a-copy.jpg", "/lib", 100, 1,
                                                                 images[0].content_hash)], [], images + more_images))
        indexer.writer.commit(Batch(files + more_files, [], images + more_images))  # the same batch delivered again
        assert catalog.count_images() == 2 and catalog.count_files() == 3
        assert sorted(catalog.files_under("/lib")) == ["/lib/a-copy.jpg", "/lib/a.jpg", "/lib/b.jpg"]
    finally:
        catalog.close()


def test_sqlite_is_refused_on_a_cluster_of_several_machines(tmp_path: Path) -> None:
    sqlite = f"sqlite:///{tmp_path / 'catalog.db'}"
    with pytest.raises(ClusterError, match="cannot share a SQLite file.*PostgreSQL"):
        check_catalog_for_cluster(sqlite, ClusterInfo("auto", nodes=3, cpus=24, gpus=2))
    check_catalog_for_cluster(sqlite, ClusterInfo("local", nodes=1, cpus=2, gpus=0))
    check_catalog_for_cluster(POSTGRES_URL, ClusterInfo("auto", nodes=3, cpus=24, gpus=2))


def test_ray_addresses_are_checked_before_anything_starts() -> None:
    for good in ("local", "auto", "ray://head:10001", "10.1.2.3:6379", "head.example:6379"):
        assert check_address(good) == good
    with pytest.raises(ClusterError, match="put --ray after the folders"):
        check_address("/home/me/Pictures")


def test_decoding_is_a_task_stage_of_its_own_before_the_embedding_actors(
        local_ray: None, tmp_path: Path, tf1_module: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = make_settings(tmp_path / "data", tf1_module)
    catalog = Catalog(settings.storage.resolved_database_url())
    try:
        indexer = RayIndexer(settings, catalog, IndexStore(tmp_path / "index"), "m@64",
                             ClusterInfo("local", nodes=1, cpus=2, gpus=0))
        indexer.source.dataset([FoundFile(str(tmp_path / "a.jpg"), str(tmp_path), 1, 1)]).explain()
    finally:
        catalog.close()
    physical = capsys.readouterr().out.split("Physical Plan (Optimized)")[1]
    assert "ActorPoolMapOperator[MapBatches(EmbedBatch)]" in physical  # not fused with decoding
    assert "TaskPoolMapOperator[MapBatches(prepare_batch)]" in physical  # CPU tasks


def test_decode_tasks_do_not_load_tensorflow(local_ray: None, tmp_path: Path) -> None:
    photo = write_image(tmp_path / "lib" / "g.png", colour_image(GREEN))
    config = PrepareConfig(f"sqlite:///{tmp_path / 'catalog.db'}", 64, 10_000_000, tmp_path / "data", 0)
    Catalog(config.database_url).close()  # the schema the tasks look content up in

    @ray.remote(num_cpus=1)
    def decode_in_a_worker() -> tuple[bool, bool, tuple[int, ...]]:
        import sys

        out = prepare_batch({"path": np.array([str(photo)], object), "root": np.array([str(photo.parent)], object),
                             "size": np.array([photo.stat().st_size]), "mtime_ns": np.array([1])}, config)
        return "tensorflow" in sys.modules, bool(out["decoded"][0]), out["pixels"].shape

    loaded_tf, decoded, shape = ray.get(decode_in_a_worker.remote())
    assert decoded and shape == (1, 64, 64, 3) and not loaded_tf


def test_cli_indexes_on_a_local_ray_with_sqlite(local_ray: None, runner, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                tf1_module: Path) -> None:
    library = tmp_path / "library"
    for i in range(3):
        write_image(library / f"g{i}.png", colour_image(GREEN, seed=i))
    config = tmp_path / "config.yaml"
    config.write_text(f"model:\n  handle: {tf1_module}\n  image_size: 64\n  batch_size: 2\n"
                      f"storage:\n  data_dir: {tmp_path / 'data'}\n")
    result = runner.invoke(cli, ["--config", str(config), "index", "--json", str(library), "--ray"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["indexed"] == 3 and summary["failed"] == 0
    bad = runner.invoke(cli, ["--config", str(config), "index", "--ray", str(library)])
    assert bad.exit_code == 2 and "put --ray after the folders" in bad.output
    bad = runner.invoke(cli, ["--config", str(config), "index", "--ray", str(library), str(library)])
    assert bad.exit_code == 1 and "is not a Ray address" in bad.output


def test_a_model_that_does_not_load_on_the_workers_stops_the_run_with_its_reason(
        local_ray: None, runner, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    write_image(tmp_path / "library" / "g.png", colour_image(GREEN))
    config = tmp_path / "config.yaml"
    config.write_text(f"model:\n  handle: {tmp_path / 'no-model'}\n  image_size: 64\n"
                      f"storage:\n  data_dir: {tmp_path / 'data'}\n")
    result = runner.invoke(cli, ["--config", str(config), "index", str(tmp_path / "library"), "--ray"])
    assert result.exit_code == 1
    assert "could not finish the run: ModelUnavailableError: model.handle" in result.output
    assert "no-model" in result.output
