"""Test support shared by every test module: images, settings, index runs, HTTP helpers, catalog rows.

Fixtures live in conftest.py; plain functions and constants live here, so no test module
imports another.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from PIL import Image

from indexer.model import Embedder, configured_model_id
from indexer.pipeline import IndexReport, LibraryIndexer
from indexer.settings import Settings, load_settings
from storage.catalog import Catalog, FileRef, NewImage
from storage.vector_index import IndexStore

REPO = Path(__file__).resolve().parent.parent
TEST_IMAGE_SIZE = 64
# Taken out of the environment: every other LOOKALIKE_* variable is a setting, and `lookalike` refuses unknown ones.
# The tests' PostgreSQL server (any database on it), and the database of this test run on that server:
# created when the run starts and dropped when it ends (conftest.py), so that runs side by side never
# clear each other's tables. The variable is removed from the environment: LOOKALIKE_* are settings.
POSTGRES_SERVER_URL = os.environ.pop("LOOKALIKE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
POSTGRES_URL = POSTGRES_SERVER_URL.rsplit("/", 1)[0] + f"/lookalike_run_{os.getpid()}_{time.time_ns()}"

# Environment variable set for the whole test run; every process a test starts inherits it.
RUN_MARK = "PYTEST_LOOKALIKE_RUN"  # not LOOKALIKE_*: those are settings

RED = (220, 30, 30)
GREEN = (30, 200, 40)
BLUE = (30, 40, 220)


def postgres_answers() -> bool:
    """Whether the PostgreSQL server of the tests answers (its cases are skipped, saying so, when not)."""
    import sqlalchemy as sa

    try:
        with sa.create_engine(POSTGRES_SERVER_URL, connect_args={"connect_timeout": 3}).connect():
            return True
    except Exception:
        return False


def create_database(url: str) -> None:
    """Create the (new, empty) database `url` names on the tests' server."""
    _on_server(f'CREATE DATABASE "{url.rsplit("/", 1)[1]}"')


def drop_database(url: str) -> None:
    _on_server(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


def _on_server(statement: str) -> None:
    import sqlalchemy as sa

    admin = sa.create_engine(POSTGRES_SERVER_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(statement))
    finally:
        admin.dispose()


def empty_catalog(url: str) -> None:
    """Leave an empty catalog of the current schema at the PostgreSQL database `url`, quickly: a catalog
    already at the newest revision has its rows removed (TRUNCATE), anything else is dropped for Catalog
    to migrate from scratch."""
    import sqlalchemy as sa

    from storage.schema_migrations import head_revision

    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            tables = set(conn.scalars(sa.text("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")))
            at_head = "alembic_version" in tables and list(
                conn.scalars(sa.text("SELECT version_num FROM alembic_version"))) == [head_revision()]
            if at_head:
                names = ", ".join(f'"{name}"' for name in sorted(tables - {"alembic_version"}))
                conn.execute(sa.text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
                return
    finally:
        engine.dispose()
    drop_everything(url)


def drop_everything(url: str) -> None:
    """Drop every table of a test database."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    meta = sa.MetaData()
    meta.reflect(engine)
    meta.drop_all(engine)
    engine.dispose()


@contextlib.contextmanager
def private_postgres_database() -> Iterator[str]:
    """The URL of a new, empty database on the tests' PostgreSQL server, dropped afterwards: for tests that
    keep a whole data dir on PostgreSQL apart from every other test."""
    url = POSTGRES_SERVER_URL.rsplit("/", 1)[0] + f"/lookalike_test_{os.getpid()}_{time.time_ns()}"
    create_database(url)
    try:
        yield url
    finally:
        drop_database(url)


def marked(variable: str, value: str) -> list[psutil.Process]:
    """Live processes other than this one whose environment holds `variable`=`value` (children inherit it).

    multiprocessing's resource tracker of this very process is left out: it ends when this process ends.
    """
    found = []
    for process in psutil.process_iter():
        if process.pid == os.getpid():
            continue
        try:
            if process.environ().get(variable) != value or process.status() == psutil.STATUS_ZOMBIE:
                continue
            if process.ppid() == os.getpid() and "multiprocessing.resource_tracker" in " ".join(process.cmdline()):
                continue
            found.append(process)
        except psutil.Error:
            continue
    return found


def still_running(variable: str, value: str, grace_seconds: float = 0.0) -> list[psutil.Process]:
    """The processes marked `variable`=`value` that are still there after up to `grace_seconds`."""
    deadline = time.monotonic() + grace_seconds
    while (alive := marked(variable, value)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return alive


def survivors(mark: str, grace_seconds: float = 0.0) -> list[psutil.Process]:
    """Processes of this test run (RUN_MARK=`mark`) still alive after a grace period."""
    return still_running(RUN_MARK, mark, grace_seconds)


# --- settings ---------------------------------------------------------------------------


def make_settings(data_dir: Path, handle: Path | str, **sections: dict[str, object]) -> Settings:
    """Settings for a test: the given model at 64x64, storage in `data_dir`, no config file or env."""
    overrides: dict[str, dict[str, object]] = {
        "model": {"handle": str(handle), "image_size": TEST_IMAGE_SIZE, "batch_size": 4},
        "storage": {"data_dir": str(data_dir)},
        # Threads start faster than worker processes; tests that need processes ask for them.
        "indexer": {"decode_workers": 2, "commit_every": 4, "decode_in_processes": False},
        "api": {"decode_processes": 0},
    }
    for section, values in sections.items():
        overrides[section] = {**overrides.get(section, {}), **values}
    return load_settings(config_file=None, environ={}, overrides=overrides)


def env_for(data_dir: Path, handle: Path | str) -> dict[str, str]:
    """Environment variables that point a `lookalike` command at a test model and data dir (and no config file).

    Decoding runs in threads, as with make_settings: worker processes take seconds to start, and the tests
    that are about them ask for them (LOOKALIKE_INDEXER__DECODE_IN_PROCESSES=true).
    """
    return {
        "LOOKALIKE_MODEL__HANDLE": str(handle),
        "LOOKALIKE_MODEL__IMAGE_SIZE": str(TEST_IMAGE_SIZE),
        "LOOKALIKE_STORAGE__DATA_DIR": str(data_dir),
        "LOOKALIKE_INDEXER__DECODE_IN_PROCESSES": "false",
        "LOOKALIKE_CONFIG": "",
    }


def subprocess_env(data_dir: Path, handle: Path | str, **extra: str) -> dict[str, str]:
    """The whole environment for a `python -m lookalike` child process of a test."""
    return {**os.environ, **env_for(data_dir, handle), "PYTHONPATH": str(REPO), **extra}


# --- images -----------------------------------------------------------------------------


def colour_image(colour: tuple[int, int, int], size: tuple[int, int] = (96, 80), seed: int = 0,
                 accent: tuple[int, int, int] | None = None) -> Image.Image:
    """A solid-colour photo stand-in with a little noise and an optional accent block (top-left)."""
    rng = np.random.default_rng(seed)
    w, h = size
    arr = np.empty((h, w, 3), np.float64)
    arr[:] = colour
    if accent is not None:
        arr[: h // 2, : w // 2] = accent
    arr += rng.normal(0, 6, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def write_image(path: Path, image: Image.Image, **save_args: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **save_args)
    return path


def make_colour_library(root: Path) -> Path:
    """14 images under `root`: 6 red (goldfish), 5 blue (jellyfish), 3 green (tree frog), in nested folders
    and several formats, plus a text file."""
    for i in range(6):
        accent = (min(255, 220 + 5 * i), 30 + 10 * i, 30)
        write_image(root / "red" / f"red{i}.jpg", colour_image(RED, seed=i, accent=accent), quality=95)
    for i in range(5):
        write_image(root / "blue" / "deep" / f"blue{i}.png", colour_image(BLUE, seed=10 + i,
                    accent=(30, 40 + 10 * i, 200)))
    for i, ext in enumerate(["webp", "bmp", "tiff"]):
        write_image(root / "green" / f"green{i}.{ext}", colour_image(GREEN, seed=20 + i, accent=(40, 180 + 10 * i, 60)))
    (root / "notes.txt").write_text("not an image")
    return root


def encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def jpeg(image: Image.Image) -> bytes:
    return encode(image, "JPEG", quality=95)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims `width` x `height` pixels but holds almost no data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\0" * 10))
            + png_chunk(b"IEND", b""))


# --- decode amplification: small or legal-sized uploads that cost far more to decode than to send ----------


def png_text_bomb(total_bytes: int) -> bytes:
    """A valid 64x64 PNG padded to `total_bytes` with tiny tEXt chunks (about 50,000 per megabyte)."""
    small = encode(Image.new("RGB", (64, 64), (10, 20, 30)), "PNG")
    at = small.index(b"IDAT") - 4
    text = png_chunk(b"tEXt", b"k\x00v")
    return small[:at] + text * ((total_bytes - len(small)) // len(text)) + small[at:]


def png_pixel_bomb(width: int, height: int) -> bytes:
    """A complete black RGB PNG: about 3 kB per megapixel on the wire, 3 bytes per pixel decoded."""
    row = b"\x00" * (1 + width * 3)
    compressor = zlib.compressobj(9)
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + png_chunk(b"IDAT", pixels) + png_chunk(b"IEND", b""))


def jpeg_segments(data: bytes) -> list[tuple[int, bytes]]:
    """(marker, bytes) of each segment after SOI; a scan (SOS) includes its entropy-coded data."""
    segments, at = [], 2
    while at < len(data):
        marker = data[at + 1]
        if marker == 0xD9:
            segments.append((marker, data[at:at + 2]))
            break
        end = at + 2 + struct.unpack(">H", data[at + 2:at + 4])[0]
        if marker == 0xDA:
            while True:
                end = data.index(b"\xff", end)
                if data[end + 1] == 0 or 0xD0 <= data[end + 1] <= 0xD7:
                    end += 2
                    continue
                break
        segments.append((marker, data[at:end]))
        at = end
    return segments


def jpeg_scan_bomb(side: int = 7000, repeat: int = 50) -> bytes:
    """A smooth `side` x `side` progressive JPEG whose 10 scans each appear `repeat` times: every scan
    walks every block of the image, so decoding costs `repeat` times a normal one (7000, 50: ~15 MB)."""
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    planes = (np.add.outer(ramp, ramp) / 2, np.add.outer(ramp, -ramp) / 2 + 128, np.full((side, side), 90.0))
    image = Image.fromarray(np.stack(planes, -1).astype(np.uint8), "RGB")
    segments = jpeg_segments(encode(image, "JPEG", quality=50, progressive=True))
    return b"\xff\xd8" + b"".join(body * (repeat if marker == 0xDA else 1) for marker, body in segments)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- index runs -------------------------------------------------------------------------


class Counting:
    """Loads the real embedder and counts the images it embeds."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.embedded = 0
        self.loads = 0

    def __call__(self) -> Embedder:
        self.loads += 1
        m = self.settings.model
        embedder = Embedder(m.handle, m.image_size, crop_fraction=m.effective_crop_fraction())
        original = embedder.embed

        def counted(pixels: np.ndarray):  # type: ignore[no-untyped-def]
            self.embedded += len(pixels)
            return original(pixels)

        embedder.embed = counted  # type: ignore[method-assign]
        return embedder


def run_index(settings: Settings, *roots: Path, reindex: bool = False) -> tuple[IndexReport, Counting]:
    """One in-process indexing run of `roots`; returns its report and the embedding counter."""
    counter = Counting(settings)
    catalog = Catalog(settings.storage.resolved_database_url())
    try:
        indexer = LibraryIndexer(settings, catalog, IndexStore(settings.storage.data_dir / "index"),
                                 configured_model_id(settings.model), counter)
        report = indexer.run([str(r) for r in roots], reindex=reindex)
    finally:
        catalog.close()
    return report, counter


def catalog_of(settings: Settings) -> Catalog:
    return Catalog(settings.storage.resolved_database_url())


# --- catalog rows without a model ---------------------------------------------------------

CATALOG_MODEL = "test-model@64"
CATALOG_DIM = 8


def unit(seed: int, dim: int = CATALOG_DIM) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=dim).astype(np.float32)
    return v / np.linalg.norm(v)


def new_image(seed: int, classes: tuple[tuple[int, float], ...] = ((1, 0.9), (2, 0.05))) -> NewImage:
    return NewImage(f"{seed:064x}", 10, 20, "JPEG", CATALOG_MODEL, unit(seed), classes)


def ref(path: str, seed: int, size: int = 100) -> FileRef:
    return FileRef(path, "/lib", size, 1, f"{seed:064x}")


def clustered(n: int, dim: int = 32, clusters: int = 20, seed: int = 0) -> np.ndarray:
    """Unit vectors around `clusters` random centres (the centres depend only on `dim` and `clusters`,
    so calls with other seeds draw more vectors of the same collection)."""
    centres = np.random.default_rng(dim * 1000 + clusters).normal(size=(clusters, dim))
    rng = np.random.default_rng(seed)
    vectors = centres[rng.integers(0, clusters, n)] + 0.3 * rng.normal(size=(n, dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def fill_catalog(catalog: Catalog, vectors: np.ndarray, model: str = CATALOG_MODEL, first: int = 0,
                 root: str = "/lib") -> list[int]:
    """Catalog images with these vectors, one file each under `root` (content hashes first, first+1, ...)."""
    seeds = range(first, first + len(vectors))
    images = [NewImage(f"{s:064x}", 1, 1, "PNG", model, v, ((1, 0.9),)) for s, v in zip(seeds, vectors, strict=True)]
    ids, _ = catalog.apply(images, [FileRef(f"{root}/{s}.png", root, 100, 1, f"{s:064x}") for s in seeds])
    return ids


# --- HTTP -------------------------------------------------------------------------------


def search(client: Any, data: bytes, query: str = "", name: str = "q.jpg") -> Any:
    """POST one query image as multipart `image` through a Flask test client."""
    return client.post(f"/api/v1/search{query}", data={"image": (io.BytesIO(data), name)},
                       content_type="multipart/form-data")


def assert_problem(response: Any, status: int, code: str, detail_part: str = "") -> dict[str, Any]:
    """The response is an RFC 9457 problem with this status and code (and `detail_part` in its detail)."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body = response.get_json(force=True)
    assert body["status"] == status and body["code"] == code and body["title"] and body["type"] == "about:blank"
    assert detail_part in body["detail"]
    assert "Traceback" not in response.get_data(as_text=True)
    return body


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(proc: subprocess.Popen[bytes], base: str, seconds: float = 180,
               probe: str = "/readyz") -> dict[str, Any]:
    """Poll `probe` of a server started as `proc` until it answers 200; fails if the process ends."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(f"{base}{probe}", timeout=5) as r:
                return dict(json.load(r))
        except OSError:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else "server exited"
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.5)


def wait_for(condition: Callable[[], object], seconds: float = 120, what: str = "condition") -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def http_search(base: str, image: Path, k: int) -> dict[str, Any]:
    """POST a file to a running server's /api/v1/search as multipart `image`."""
    boundary = "lookalikeboundary"
    payload = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"q.jpg\"\r\n"
               "Content-Type: image/jpeg\r\n\r\n").encode() + image.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(f"{base}/api/v1/search?k={k}", data=payload, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(request, timeout=60) as r:
        return dict(json.load(r))


# --- processes ----------------------------------------------------------------------------

RUN_MARKER_ENV = "TEST_RUN_MARKER"  # not LOOKALIKE_*: those are settings


def marked_processes(marker: str) -> list[int]:
    """Pids of the processes a test started with RUN_MARKER_ENV=`marker`, and of every child they made."""
    return [p.pid for p in marked(RUN_MARKER_ENV, marker)]


def wait_until_gone(marker: str, seconds: float) -> list[int]:
    """Waits up to `seconds` for every process marked `marker` to end; returns the pids still alive."""
    return [p.pid for p in still_running(RUN_MARKER_ENV, marker, seconds)]


def kill_marked(marker: str) -> None:
    """SIGKILL what a test left behind (after its assertions), so nothing outlives it."""
    for process in marked(RUN_MARKER_ENV, marker):
        with contextlib.suppress(psutil.Error):
            process.kill()


def raw_http(port: int, request: bytes, timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    """Send `request` as is over a new loopback connection; the status, headers and body of the answer."""
    import http.client
    import threading

    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        def send() -> None:  # from a thread: a server may answer (and close) before it read everything
            try:
                sock.sendall(request)
            except OSError:
                pass

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        response = http.client.HTTPResponse(sock)
        response.begin()
        answer = response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        sender.join(timeout)
        return answer


def chunked(*chunks: bytes) -> bytes:
    """A chunked transfer-coding body holding `chunks`, with its last chunk."""
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


class ServerProcess:
    """`lookalike serve` in a session of its own on a free loopback port, its output in `log`.

    Leaving the `with` block ends it and every process it started (workers, decode processes),
    whatever state they are in, so nothing outlives the test.
    """

    def __init__(self, env: dict[str, str], log: Path, workers: int = 1, args: tuple[str, ...] = (),
                 python_args: tuple[str, ...] = ("-m", "lookalike"), probe: str = "/readyz",
                 cwd: Path | None = None, serve_args: tuple[str, ...] = ()) -> None:
        self.env, self.log_path, self.workers_wanted, self.args, self.cwd = env, log, workers, args, cwd
        self.serve_args = serve_args  # after `serve`
        self.probe = probe  # entered once this path answers 200
        self.python_args = python_args  # how Python starts the command (the arguments follow)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.seen: set[int] = set()  # every descendant ever listed, ended on exit

    def __enter__(self) -> ServerProcess:
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, *self.python_args, *self.args, "serve", "--host", "127.0.0.1",
                 "--port", str(self.port), "--workers", str(self.workers_wanted), *self.serve_args],
                env=self.env, cwd=self.cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        wait_ready(self.proc, self.base, probe=self.probe)
        wait_for(lambda: len(self.worker_pids()) == self.workers_wanted, 60, "the workers")
        return self

    def __exit__(self, *exc: object) -> None:
        import psutil

        assert self.proc is not None
        if self.proc.poll() is None:
            self.descendants()
            self.proc.kill()
            self.proc.wait(30)
        for pid in self.seen:
            try:
                psutil.Process(pid).kill()
            except psutil.Error:
                pass

    def descendants(self) -> list[int]:
        import psutil

        assert self.proc is not None
        try:
            pids = [p.pid for p in psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        self.seen.update(pids)
        return pids

    def worker_pids(self) -> set[int]:
        """Live gunicorn workers: the server's children that are not zombies (nor its watcher)."""
        import psutil

        assert self.proc is not None
        workers = set()
        for child in psutil.Process(self.proc.pid).children():
            try:
                if child.status() != psutil.STATUS_ZOMBIE and "--parent-pid" not in child.cmdline():
                    workers.add(child.pid)
            except psutil.NoSuchProcess:
                continue
        self.seen.update(workers)
        return workers

    def watcher_pids(self) -> set[int]:
        """The live `lookalike watch` child of a `serve --watch`."""
        import psutil

        assert self.proc is not None
        found = set()
        for child in psutil.Process(self.proc.pid).children():
            try:
                if child.status() != psutil.STATUS_ZOMBIE and "--parent-pid" in child.cmdline():
                    found.add(child.pid)
            except psutil.NoSuchProcess:
                continue
        self.seen.update(found)
        return found

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, group: bool = False, seconds: float = 30) -> int:
        """Send `sig` (to the whole session, as Ctrl-C in a terminal does, with `group`); its exit status."""
        assert self.proc is not None
        self.descendants()
        if group:
            os.killpg(self.proc.pid, sig)
        else:
            self.proc.send_signal(sig)
        return self.proc.wait(seconds)


# --- a library that changes ---------------------------------------------------------------


class Library:
    """A folder of small generated images that changes a little every round."""

    def __init__(self, root: Path, seed: int) -> None:
        self.root = root
        self.rng = np.random.default_rng(seed)
        self.next_seed = 0

    def _picture(self) -> tuple[Image.Image, str]:
        self.next_seed += 1
        colour = tuple(int(c) for c in self.rng.integers(0, 256, 3))
        accent = tuple(int(c) for c in self.rng.integers(0, 256, 3))
        ext = ("png", "jpg", "webp")[self.next_seed % 3]
        return colour_image(colour, size=(40, 32), seed=self.next_seed, accent=accent), ext  # type: ignore[arg-type]

    def add(self, count: int) -> None:
        for _ in range(count):
            image, ext = self._picture()
            path = self.root / f"d{self.next_seed % 7}" / f"img{self.next_seed:05d}.{ext}"
            path.parent.mkdir(parents=True, exist_ok=True)
            image.save(path)

    def files(self) -> list[Path]:
        return sorted(p for p in self.root.rglob("*") if p.is_file())

    def _pick(self, count: int) -> list[Path]:
        files = self.files()
        return [files[i] for i in self.rng.choice(len(files), count, replace=False)]

    def change_content(self) -> None:
        """New pixels: 14 new files, 3 rewritten in place, 4 deleted, 2 copies."""
        self.add(14)
        picked = self._pick(9)
        for path in picked[:3]:
            image, _ = self._picture()
            image.save(path, format={"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}[path.suffix[1:]])
        self._copy(picked[3:5])
        for path in picked[5:]:
            path.unlink()

    def reorganise(self) -> None:
        """No new pixels: 6 files moved to another folder, 3 copies, 5 deleted."""
        picked = self._pick(14)
        for path in picked[:6]:
            target = self.root / "moved" / f"{self.next_seed}_{path.name}"
            target.parent.mkdir(exist_ok=True)
            path.rename(target)
            self.next_seed += 1
        self._copy(picked[6:9])
        for path in picked[9:]:
            path.unlink()

    def _copy(self, paths: list[Path]) -> None:
        for path in paths:
            self.next_seed += 1
            path.with_name(f"copy{self.next_seed}{path.suffix}").write_bytes(path.read_bytes())


def assert_catalog_matches_files(settings: Settings, library: Library) -> list[int]:
    """Every file on disk is in the catalog once, pointing at an image of its current content."""
    on_disk = {str(p.resolve()): sha256_of(p) for p in library.files()}
    catalog = catalog_of(settings)
    try:
        images = catalog.get_images(list(range(1, catalog.max_image_id() + 1)))
        in_catalog = {path: record.content_hash for record in images.values() for path in record.paths}
        assert in_catalog == on_disk
        assert catalog.count_files() == len(on_disk)
        # one image per distinct content, and no image without a file
        assert catalog.count_images() == len(images) == len(set(on_disk.values()))
        return sorted(images)
    finally:
        catalog.close()


def counted_model(service: Any) -> list[int]:
    """The real model of `service`, wrapped so that every call appends the number of images it embeds."""
    embedder = service.embedder
    calls: list[int] = []
    real_embed = embedder.embed

    def counting_embed(pixels):  # type: ignore[no-untyped-def]
        calls.append(len(pixels))
        return real_embed(pixels)

    embedder.embed = counting_embed  # type: ignore[method-assign]
    return calls
