"""Adding and removing images over HTTP: stored by content, searchable at once, never duplicated, library
images refused, a busy writer answered 503, and a crash between file and commit reconciled at start."""

from __future__ import annotations

import hashlib
import io
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from helpers import BLUE, GREEN, assert_problem, catalog_of, colour_image, jpeg, run_index, search

from indexer.settings import Settings
from indexer.uploads import UploadStore, safe_name
from search_api import create_app
from search_api.current import service_of
from storage.lock import writer_lock

PURPLE = (150, 40, 200)


@pytest.fixture
def writable(settings_for: Callable[..., Settings], colour_library: Path) -> Settings:
    settings = settings_for(api={"max_upload_mb": 1, "write_wait_seconds": 0.3})
    report, _ = run_index(settings, colour_library)
    assert report.indexed == 14
    return settings


@pytest.fixture
def wclient(writable: Settings) -> FlaskClient:
    app = create_app(writable)
    app.config["TESTING"] = True
    return app.test_client()


def add(client: FlaskClient, data: bytes, name: str = "new.jpg", **kwargs: object) -> object:
    return client.post("/api/v1/images", data={"image": (io.BytesIO(data), name)},
                       content_type="multipart/form-data", **kwargs)


def test_an_added_image_is_stored_by_content_and_searchable_at_once(wclient: FlaskClient, writable: Settings) -> None:
    data = jpeg(colour_image(PURPLE, seed=9))
    answer = add(wclient, data, name="../../holiday photo.jpg")
    assert answer.status_code == 201, answer.get_json()
    image = answer.get_json()
    assert answer.headers["Location"].endswith(f"/api/v1/images/{image['id']}")
    uploads = writable.storage.resolved_upload_dir()
    stored = Path(image["path"])
    assert stored.parent.parent.parent == uploads and stored.name == "holiday photo.jpg"
    assert stored.read_bytes() == data
    found = search(wclient, data).get_json()["results"]
    assert found[0]["id"] == image["id"] and found[0]["score"] > 0.999
    assert wclient.get(f"/api/v1/images/{image['id']}/file").data == data
    assert wclient.get(f"/api/v1/images/{image['id']}/thumbnail").status_code == 200

    again = add(wclient, data, name="copy.jpg")  # the same bytes: nothing duplicated
    assert again.status_code == 200 and again.get_json()["id"] == image["id"]
    raw = wclient.post("/api/v1/images?name=raw", data=jpeg(colour_image(BLUE, seed=77)), content_type="image/jpeg")
    assert raw.status_code == 201 and Path(raw.get_json()["path"]).name == "raw.jpg"
    library_copy = add(wclient, (Path(writable.storage.data_dir).parent / "library" / "red" / "red0.jpg").read_bytes())
    assert library_copy.status_code == 200  # already in the library: that image, no upload stored


def test_uploads_are_checked_like_search_uploads(wclient: FlaskClient, writable: Settings) -> None:
    assert_problem(add(wclient, b"not an image at all"), 415, "not_image")
    assert_problem(wclient.post("/api/v1/images", data=b"", content_type="image/png"), 400, "empty_upload")
    assert_problem(wclient.post("/api/v1/images", data=b"x" * (2 << 20), content_type="image/png"), 413,
                   "request_entity_too_large")
    uploads = writable.storage.resolved_upload_dir()
    assert not uploads.exists() or not any(uploads.rglob("*.*"))


def test_removing_an_upload_and_refusing_a_library_image(wclient: FlaskClient, writable: Settings) -> None:
    data = jpeg(colour_image(PURPLE, seed=11))
    image = add(wclient, data).get_json()
    stored = Path(image["path"])
    gone = wclient.delete(f"/api/v1/images/{image['id']}")
    assert gone.status_code == 204 and not stored.exists() and not stored.parent.exists()
    assert_problem(wclient.get(f"/api/v1/images/{image['id']}"), 404, "unknown_image")
    assert all(r["id"] != image["id"] for r in search(wclient, data).get_json()["results"])
    assert_problem(wclient.delete(f"/api/v1/images/{image['id']}"), 404, "unknown_image")
    library = wclient.delete("/api/v1/images/1")
    assert_problem(library, 409, "in_library", "delete or move it there")
    assert wclient.get("/api/v1/images/1").status_code == 200


def test_a_busy_writer_answers_503_with_retry_after(wclient: FlaskClient, writable: Settings) -> None:
    data = jpeg(colour_image(GREEN, seed=31))
    with writer_lock(writable.storage.data_dir):
        busy = add(wclient, data)
        assert_problem(busy, 503, "catalog_busy", "api.write_wait_seconds")
        assert busy.headers["Retry-After"] == "5" and "pid" not in busy.get_json()["detail"]
        assert_problem(wclient.delete("/api/v1/images/1"), 409, "in_library")  # refused before any lock
    released = threading.Event()

    def let_go_soon() -> None:
        with writer_lock(writable.storage.data_dir):
            released.wait(0.1)

    holder = threading.Thread(target=let_go_soon)
    holder.start()
    assert add(wclient, data).status_code == 201  # waits for a writer that lets go within the wait
    holder.join()


def test_a_crash_between_file_and_commit_is_reconciled_at_start(writable: Settings) -> None:
    uploads = writable.storage.resolved_upload_dir()
    orphan = UploadStore(uploads).store(b"half an upload", "ab" * 32, "cut.jpg").path  # no catalog row names it
    kept_app = create_app(writable)
    kept = add(kept_app.test_client(), jpeg(colour_image(PURPLE, seed=5))).get_json()
    app = create_app(writable)
    service_of(app).warm_up()
    assert not orphan.exists() and not orphan.parent.exists()
    assert Path(kept["path"]).is_file()  # an upload the catalog holds stays
    catalog = catalog_of(writable)
    try:
        assert str(orphan) not in catalog.files_under(str(uploads))
    finally:
        catalog.close()


def test_safe_names() -> None:
    assert safe_name("../../etc/passwd", "PNG") == "passwd.png"
    assert safe_name(None, "JPEG") == "upload.jpg"
    assert safe_name("a\nb\x00c.gif", "GIF") == "a_b_c.gif"
    assert safe_name("..", "WEBP") == "upload.webp"


def test_reconcile_never_reaches_outside_the_upload_folder(writable: Settings, tmp_path: Path) -> None:
    """Links planted in upload_dir (or folders someone else put there) are not the store's: nothing they
    lead to is removed, and files that do not follow the store's layout are left alone."""
    outside = tmp_path / "outside"
    (outside / "holiday").mkdir(parents=True)
    precious = outside / "holiday" / "precious.jpg"
    precious.write_bytes(b"mine")
    uploads = writable.storage.resolved_upload_dir()
    uploads.mkdir(parents=True, exist_ok=True)
    (uploads / "zz").symlink_to(outside)  # uploads/zz/holiday/precious.jpg looks like an orphan
    (uploads / "ab").mkdir()
    (uploads / "ab" / ("ab" * 32)).symlink_to(outside / "holiday")
    (uploads / "my").mkdir()
    notes = uploads / "my" / "notes.txt"
    notes.write_text("someone's notes")
    orphan = UploadStore(uploads).store(b"half an upload", "cd" * 32, "cut.jpg").path
    service_of(create_app(writable)).warm_up()
    assert precious.read_bytes() == b"mine" and notes.is_file()
    assert not orphan.exists()  # the store's own leftovers still go


def test_store_and_remove_never_write_through_a_planted_link(wclient: FlaskClient, writable: Settings,
                                                             tmp_path: Path) -> None:
    data = jpeg(colour_image(PURPLE, seed=21))
    digest = hashlib.sha256(data).hexdigest()
    outside = tmp_path / "elsewhere"
    (outside / digest).mkdir(parents=True)
    kept = outside / digest / "kept.txt"
    kept.write_text("not the store's")
    uploads = writable.storage.resolved_upload_dir()
    uploads.mkdir(parents=True, exist_ok=True)
    (uploads / digest[:2]).symlink_to(outside)
    added = add(wclient, data)
    assert added.status_code == 201, added.get_json()
    stored = Path(added.get_json()["path"])
    assert not (uploads / digest[:2]).is_symlink() and stored.is_file()  # the link gave way to a real folder
    assert sorted(p.name for p in (outside / digest).iterdir()) == ["kept.txt"]
    assert wclient.get(f"/api/v1/images/{added.get_json()['id']}/file").data == data

    stored.parent.rename(tmp_path / "moved")  # now the content folder itself is a link out of upload_dir
    stored.parent.symlink_to(outside / digest)
    assert wclient.delete(f"/api/v1/images/{added.get_json()['id']}").status_code == 204
    assert kept.read_text() == "not the store's"


def test_long_names_fit_the_file_system(wclient: FlaskClient) -> None:
    for i, name in enumerate(["\U00020000" * 100 + ".jpg", "\u00e9" * 300 + ".jpg", "a" * 5000]):
        answer = add(wclient, jpeg(colour_image(PURPLE, seed=40 + i)), name=name)
        assert answer.status_code == 201, answer.get_json()
        assert len(Path(answer.get_json()["path"]).name.encode()) <= 255
    assert len(safe_name("\U00020000" * 100, "JPEG").encode()) <= 255
