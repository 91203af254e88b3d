"""File names are bytes: names that are not UTF-8, or hold newlines, control characters, quotes,
backslashes or bidi overrides, are indexed, stored losslessly, served with RFC 6266 headers,
shown with U+FFFD in JSON, and printed escaped on a terminal. One file the catalog cannot store
never fails or loses its batch."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from urllib.parse import unquote

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from helpers import RED, catalog_of, colour_image, env_for, make_settings, run_index, write_image

from indexer.settings import Settings
from lookalike.cli import cli
from search_api import create_app
from storage.paths import display_path, from_db, printable, to_db

NOT_UTF8_NAMES = [
    os.fsdecode(b"x\xff\xfe.jpg"),  # not UTF-8 (an old FAT or Samba copy)
    os.fsdecode("caf\u00e9-latin1.jpg".encode("latin-1")),  # Latin-1 bytes
]
UTF8_ODD_NAMES = [
    "new\nline.jpg",
    "tab\there.jpg",
    "esc\x1b[31mred\x07bell\x08.jpg",
    'say "cheese".jpg',
    "back\\slash\\x41.jpg",  # backslashes, one followed by what looks like an escape
    "caf\u00e9 \u2615 \u5199\u771f.jpg",
    "photo\u202egpj.jpg",  # a right-to-left override
    "<img src=x onerror=alert(1)>.jpg",
]
ODD_NAMES = NOT_UTF8_NAMES + UTF8_ODD_NAMES
ODD_FOLDER = os.fsdecode(b"folder\xe9")  # a folder whose name is not UTF-8 either
# Control characters a terminal acts on; tab and newline are allowed only where the output puts them.
TERMINAL_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202e]")


def odd_library(root: Path, not_utf8: bool = True) -> dict[str, Path]:
    """One image per odd name, plus (`not_utf8`) one in a folder whose name is not UTF-8 either;
    returns path string -> Path."""
    paths = {}
    for seed, name in enumerate(ODD_NAMES):
        if name in NOT_UTF8_NAMES and not not_utf8:
            continue
        path = Path(os.path.join(root, name))
        write_image(path, colour_image(RED, seed=seed, accent=(200, 10 * seed, 40)), quality=92)
        paths[str(path)] = path
    if not not_utf8:
        return paths
    nested = Path(os.path.join(root, ODD_FOLDER, os.fsdecode(b"inner\xff.png")))
    write_image(nested, colour_image(RED, seed=99, accent=(10, 10, 250)))
    paths[str(nested)] = nested
    return paths


def test_paths_round_trip_through_the_catalog_text() -> None:
    for path in ODD_NAMES + ["/plain/path.jpg", "\\\\", "\\x41", "a\\", os.fsdecode(b"\\\xff\\xff")]:
        assert from_db(to_db(path)) == path
        assert to_db(path).encode("utf-8")  # every database stores it
    assert to_db("/plain/caf\u00e9.jpg") == "/plain/caf\u00e9.jpg"  # ordinary paths are unchanged
    assert len({to_db(p) for p in ["\\x41", "A", "\\\\x41", os.fsdecode(b"\x41")]}) == 3  # "A" twice: one text
    assert display_path(os.fsdecode(b"x\xff.jpg")) == "x\ufffd.jpg"
    assert printable("a\x1b[2J\x07\nb" + os.fsdecode(b"\xff")) == "a\\x1b[2J\\x07\\nb\\xff"


def test_odd_names_are_indexed_stored_losslessly_and_unchanged_on_the_next_run(
    database_url: str, tmp_path: Path, tf1_module: Path
) -> None:
    root = (tmp_path / "library").resolve()
    paths = odd_library(root)
    settings = make_settings(tmp_path / "data", tf1_module, storage={"database_url": database_url})
    first, _ = run_index(settings, root)
    print(f"\nfiles with odd names indexed: {first.indexed} of {len(paths)}")
    assert (first.indexed, first.failed) == (len(paths), 0), first.failures
    again, counter = run_index(settings, root)
    assert (again.unchanged, again.indexed, again.removed, again.failed) == (len(paths), 0, 0, 0)
    assert counter.loads == 0
    catalog = catalog_of(settings)
    try:
        assert all(catalog.image_id_for_path(path) is not None for path in paths)
        assert set(catalog.files_under(str(root))) == set(paths)
        with catalog.engine.connect() as conn:
            stored = set(conn.scalars(sa.text("SELECT path FROM files")))
    finally:
        catalog.close()
    assert os.path.join(str(root), "back\\\\slash\\\\x41.jpg") in stored
    assert os.path.join(str(root), "x\\xff\\xfe.jpg") in stored
    assert os.path.join(str(root), "caf\u00e9 \u2615 \u5199\u771f.jpg") in stored  # byte-identical


@pytest.mark.parametrize("not_utf8", [False, True], ids=["utf8-names", "with-non-utf8-names"])
def test_odd_names_are_served_with_rfc_6266_headers(tmp_path: Path, tf1_module: Path, not_utf8: bool) -> None:
    root = (tmp_path / "library").resolve()
    paths = odd_library(root, not_utf8)
    settings = make_settings(tmp_path / "data", tf1_module)
    assert run_index(settings, root)[0].indexed == len(paths)
    client = create_app(settings).test_client()
    catalog = catalog_of(settings)
    for path, file in paths.items():
        image_id = catalog.image_id_for_path(path)
        meta = client.get(f"/api/v1/images/{image_id}").get_json()
        assert meta["path"] == display_path(path) and meta["paths"] == [display_path(path)]
        response = client.get(meta["file_url"])
        assert response.status_code == 200, (path, response.get_data(as_text=True))
        assert response.data == file.read_bytes()
        header = response.headers["Content-Disposition"]
        assert re.fullmatch(r"[\x20-\x7e]+", header), header  # one line of printable ASCII
        fallback = re.search(r'filename="([^"]*)"', header)
        assert fallback and not re.search(r'[\x00-\x1f\x7f"\\]', fallback.group(1))
        exact = re.search(r"filename\*=UTF-8''(\S+)", header)
        name = display_path(os.path.basename(path))
        assert (unquote(exact.group(1)) if exact else fallback.group(1)) == name, header
        assert client.get(meta["thumbnail_url"]).status_code == 200
    catalog.close()


@pytest.mark.parametrize("not_utf8", [False, True], ids=["utf8-names", "with-non-utf8-names"])
def test_terminal_output_escapes_names_and_json_stays_exact(tmp_path: Path, tf1_module: Path, not_utf8: bool) -> None:
    root = (tmp_path / "library").resolve()
    paths = odd_library(root, not_utf8)
    # Rejected files with hostile names, and a duplicate of one odd file under another odd name.
    bad_names = ["bad\x1b]0;owned\x07\n.jpg", os.fsdecode(b"bad\xff\x1b[2J.jpg" if not_utf8 else b"bad\x1b[2J.jpg")]
    for name in bad_names:
        Path(os.path.join(root, name)).write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    escape_file = Path(os.path.join(root, "esc\x1b[31mred\x07bell\x08.jpg"))
    Path(os.path.join(root, "dup\r\x1b[1A.jpg")).write_bytes(escape_file.read_bytes())
    env = env_for(tmp_path / "data", tf1_module)
    runner = CliRunner()

    indexed = runner.invoke(cli, ["index", str(root)], env=env)
    assert indexed.exit_code == 0, indexed.output
    assert "rejected" in indexed.stderr and not TERMINAL_CONTROLS.search(indexed.stderr), indexed.stderr
    assert "\\x1b]0;owned\\x07\\n.jpg" in indexed.stderr and printable(bad_names[1]) in indexed.stderr

    human = runner.invoke(cli, ["errors"], env=env)
    assert human.exit_code == 0
    rows = human.stdout.splitlines()
    assert len(rows) == len(bad_names) and all(row.count("\t") == 2 for row in rows)
    assert not TERMINAL_CONTROLS.search(human.stdout), human.stdout
    listed = json.loads(runner.invoke(cli, ["errors", "--json"], env=env).stdout)
    assert sorted(entry["path"] for entry in listed) == sorted(display_path(os.path.join(root, n)) for n in bad_names)

    query = tmp_path / "query.jpg"
    escape_file.rename(query)
    escape_file.write_bytes(query.read_bytes())
    table = runner.invoke(cli, ["search", str(query), "--k", "20"], env=env)
    assert table.exit_code == 0, table.output
    assert not TERMINAL_CONTROLS.search(table.stdout), table.stdout
    shown = ["dup\\r\\x1b[1A.jpg", "photo\\u202egpj.jpg", "tab\\there.jpg"] + (["x\\xff\\xfe.jpg"] if not_utf8 else [])
    for name in shown:
        assert name in table.stdout, (name, table.stdout)
    assert "\ufffd" not in table.stdout  # the bytes themselves are shown
    results = json.loads(runner.invoke(cli, ["search", str(query), "--json", "--k", "20"],
                                       env=env).stdout)["queries"][0]["results"]
    shown_paths = {display_path(p) for p in paths} - {str(escape_file)}  # shown as its duplicate "dup..."
    assert {r["path"] for r in results} >= shown_paths | {display_path(os.path.join(root, "dup\r\x1b[1A.jpg"))}

    dupes = runner.invoke(cli, ["duplicates"], env=env)
    assert dupes.exit_code == 0 and "dup\\r\\x1b[1A.jpg" in dupes.stdout
    assert not TERMINAL_CONTROLS.search(dupes.stdout), dupes.stdout
    exact = json.loads(runner.invoke(cli, ["duplicates", "--json"], env=env).stdout)["exact"]
    assert [sorted(g["paths"]) for g in exact] == [sorted([str(escape_file), os.path.join(root, "dup\r\x1b[1A.jpg")])]


@pytest.fixture
def far_future_file(tmp_path: Path) -> Path:
    """A good image dated in the year 2300: its time in nanoseconds does not fit a 64-bit column."""
    path = write_image(tmp_path / "library" / "b-from-2300.jpg", colour_image(RED, seed=77), quality=90)
    year_2300_ns = int(time.mktime((2300, 1, 1, 0, 0, 0, 0, 0, 0))) * 10**9
    os.utime(path, ns=(year_2300_ns, year_2300_ns))
    assert path.stat().st_mtime_ns > 2**63
    return path


def test_a_file_the_catalog_cannot_store_never_fails_its_batch(
    database_url: str, tmp_path: Path, tf1_module: Path, far_future_file: Path
) -> None:
    root = far_future_file.parent.resolve()
    for i in range(5):
        write_image(root / f"a{i}.jpg", colour_image(RED, seed=i, accent=(30, 30 * i, 200)), quality=90)
    settings: Settings = make_settings(tmp_path / "data", tf1_module,
                                       storage={"database_url": database_url}, indexer={"commit_every": 16})
    report, _ = run_index(settings, root)
    assert (report.indexed, report.failed) == (5, 1)
    (failure,) = report.failures
    assert failure["path"].endswith("b-from-2300.jpg") and failure["kind"] == "unstorable"
    assert "cannot store this file" in failure["error"]
    catalog = catalog_of(settings)
    try:
        assert catalog.count_images() == 5 and catalog.count_files() == 5
        (rejection,) = catalog.rejections()
        assert rejection.kind == "unstorable" and rejection.path == str(far_future_file.resolve())
    finally:
        catalog.close()
    again, _ = run_index(settings, root)  # the file is retried (its time cannot be recorded), the rest stays
    assert (again.unchanged, again.indexed, again.failed) == (5, 0, 1)


def test_odd_paths_travel_through_a_ray_dataset_and_its_decode_tasks(tmp_path: Path) -> None:
    """The distributed indexer hands paths to Ray Data, whose Arrow columns hold only valid UTF-8."""
    import numpy as np
    import pyarrow as pa

    from indexer.distributed import prepare_batch
    from indexer.prepare import PrepareConfig
    from storage.catalog import Catalog

    root = (tmp_path / "library").resolve()
    paths = odd_library(root)
    rows = [{"path": to_db(p), "root": to_db(str(root)), "size": f.stat().st_size, "mtime_ns": f.stat().st_mtime_ns}
            for p, f in paths.items()]
    with pytest.raises((pa.ArrowInvalid, UnicodeEncodeError)):
        pa.Table.from_pylist([{"path": p} for p in paths])  # the raw names cannot go through Arrow
    table = pa.Table.from_pylist(rows)
    batch = {name: np.asarray(table.column(name).to_pylist(), dtype=object) for name in table.column_names}
    config = PrepareConfig(f"sqlite:///{tmp_path / 'catalog.db'}", 64, 10_000_000, tmp_path / "data", 0)
    Catalog(config.database_url).close()
    out = prepare_batch(batch, config)
    assert list(out["decoded"]) == [True] * len(paths), list(out["error"])
    assert [from_db(p) for p in out["path"]] == list(paths)
