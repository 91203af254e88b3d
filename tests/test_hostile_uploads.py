"""Hostile requests, table-driven: each gets the right 4xx problem JSON, memory stays bounded,
nothing leaks from outside the library, and the server keeps answering afterwards."""

from __future__ import annotations

import gc
import io
import json
import os
import struct
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from flask.testing import FlaskClient
from helpers import (
    BLUE,
    RED,
    REPO,
    assert_problem,
    colour_image,
    encode,
    jpeg,
    make_settings,
    png_header_only,
    png_pixel_bomb,
    png_text_bomb,
    run_index,
    subprocess_env,
    write_image,
)
from PIL import Image

from indexer.settings import Settings
from search_api import create_app
from search_api.current import service_of
from storage.catalog import Catalog

MAX_UPLOAD_MB = 1
UPLOAD_PIXELS = 4_000_000
# Decoding one of the bombs for real would take hundreds of megabytes; rejecting it, almost nothing.
BOMB_MEMORY_MB = 60


def gif_bomb(width: int, height: int) -> bytes:
    screen = b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0)
    frame = b"," + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x08\x02\x4c\x01\x00"
    return screen + frame + b";"


def tiff_bomb(width: int, height: int) -> bytes:
    """A little-endian, uncompressed greyscale TIFF header claiming `width` x `height` pixels."""
    tags = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 200),
            (277, 3, 1), (278, 4, height), (279, 4, min(width * height, 2**32 - 1))]
    ifd = struct.pack("<H", len(tags)) + b"".join(
        struct.pack("<HHII", tag, kind, 1, value) if kind == 4 else struct.pack("<HHIHH", tag, kind, 1, value, 0)
        for tag, kind, value in tags) + struct.pack("<I", 0)
    body = b"II*\x00" + struct.pack("<I", 8) + ifd
    return body + b"\x00" * (200 - len(body)) + b"\x00" * 64


def webp_bomb(width: int, height: int) -> bytes:
    """A lossless WebP whose VP8L header claims `width` x `height` (at most 16384 each)."""
    data = bytearray(encode(Image.new("RGB", (4, 4)), "WEBP", lossless=True))
    at = data.index(b"VP8L") + 8
    assert data[at] == 0x2F
    bits = int.from_bytes(data[at + 1:at + 5], "little")
    bits = (bits & ~((1 << 28) - 1)) | (width - 1) | ((height - 1) << 14)
    data[at + 1:at + 5] = bits.to_bytes(4, "little")
    return bytes(data)


def jpeg_bomb(width: int, height: int) -> bytes:
    """A real JPEG whose frame header (SOF0) claims `width` x `height`."""
    data = bytearray(encode(Image.new("RGB", (8, 8)), "JPEG"))
    at = data.index(b"\xff\xc0") + 5
    data[at:at + 4] = struct.pack(">HH", height, width)
    return bytes(data)


BOMBS = {
    "png-header": png_header_only(100_000, 100_000),
    "png-real-zlib": png_pixel_bomb(6000, 6000),  # 36 megapixels in about 100 kB
    "gif": gif_bomb(65_535, 65_535),
    "tiff": tiff_bomb(100_000, 100_000),
    "webp": webp_bomb(16_384, 16_384),
    "jpeg": jpeg_bomb(65_000, 65_000),
}

SVG = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect/></svg>'
PDF = b"%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"
A_JPEG = jpeg(colour_image(RED, seed=5))
A_PNG = encode(colour_image(BLUE, seed=6), "PNG")

# (id, uploaded bytes, file name, query string, status, code, part of the detail)
UPLOADS = [
    *[(f"bomb-{name}", data, "bomb.img", "", 422, "too_many_pixels", "api.max_upload_pixels")
      for name, data in BOMBS.items()],
    ("zero-bytes", b"", "empty.jpg", "", 400, "empty_upload", "empty"),
    ("truncated-jpeg", A_JPEG[: len(A_JPEG) // 2], "half.jpg", "", 422, "corrupt", "cannot decode"),
    ("truncated-png", A_PNG[: len(A_PNG) // 2], "half.png", "", 422, "corrupt", "cannot decode"),
    ("header-only-jpeg", A_JPEG[:20], "head.jpg", "", 415, "not_image", "not an image"),
    ("html-as-jpg", b"<!doctype html><script>alert(1)</script>", "x.jpg", "", 415, "not_image", "not an image"),
    ("svg-as-jpg", SVG, "x.jpg", "", 415, "not_image", "not an image"),
    ("pdf-as-jpg", PDF, "x.jpg", "", 415, "not_image", "not an image"),
    ("ico", encode(Image.new("RGB", (16, 16)), "ICO"), "x.ico", "", 415, "unsupported_format", "ICO"),
    ("ppm", encode(Image.new("RGB", (16, 16)), "PPM"), "x.jpg", "", 415, "unsupported_format", "PPM"),
    ("tga", encode(Image.new("RGB", (16, 16)), "TGA"), "x.jpg", "", 415, "unsupported_format", "TGA"),
    ("pcx", encode(Image.new("RGB", (16, 16)), "PCX"), "x.jpg", "", 415, "unsupported_format", "PCX"),
    ("over-the-limit", os.urandom(MAX_UPLOAD_MB * 2**20 + 1), "big.jpg", "", 413, "request_entity_too_large",
     "larger than the limit"),
    ("k-zero", A_JPEG, "q.jpg", "?k=0", 400, "invalid_parameter", "k must be"),
    ("k-negative", A_JPEG, "q.jpg", "?k=-5", 400, "invalid_parameter", "k must be"),
    ("k-huge", A_JPEG, "q.jpg", "?k=" + "9" * 40, 400, "invalid_parameter", "k must be"),
    ("k-over-max", A_JPEG, "q.jpg", "?k=1001", 400, "invalid_parameter", "k must be"),
    ("k-float", A_JPEG, "q.jpg", "?k=2.5", 400, "invalid_parameter", "k must be an integer"),
    ("k-exponent", A_JPEG, "q.jpg", "?k=1e3", 400, "invalid_parameter", "k must be an integer"),
    ("k-nul", A_JPEG, "q.jpg", "?k=%00", 400, "invalid_parameter", "k must be an integer"),
    ("min-score-nan", A_JPEG, "q.jpg", "?min_score=nan", 400, "invalid_parameter", "min_score"),
    ("min-score-inf", A_JPEG, "q.jpg", "?min_score=inf", 400, "invalid_parameter", "min_score"),
    ("min-score-2", A_JPEG, "q.jpg", "?min_score=2", 400, "invalid_parameter", "min_score"),
    ("class-unknown", A_JPEG, "q.jpg", "?class=unicorn", 400, "unknown_class", "unicorn"),
    ("class-negative", A_JPEG, "q.jpg", "?class=-1", 400, "unknown_class", "-1"),
    ("class-huge-id", A_JPEG, "q.jpg", "?class=" + "9" * 30, 400, "unknown_class", "999"),
    ("class-path", A_JPEG, "q.jpg", "?class=../../etc/passwd", 400, "unknown_class", "passwd"),
]


@pytest.fixture(scope="module")
def library_and_settings(tmp_path_factory: pytest.TempPathFactory, tf1_module: Path) -> tuple[Path, Settings]:
    base = tmp_path_factory.mktemp("hostile")
    library = base / "library"
    for i in range(4):
        write_image(library / f"red{i}.jpg", colour_image(RED, seed=i), quality=90)
        write_image(library / f"blue{i}.png", colour_image(BLUE, seed=10 + i))
    outside = base / "outside"
    write_image(outside / "secret.jpg", colour_image(RED, seed=99, accent=(1, 2, 3)), quality=90)
    os.symlink(outside / "secret.jpg", library / "link-out.jpg")  # not followed by the indexer
    settings = make_settings(base / "data", tf1_module, api={"max_upload_mb": MAX_UPLOAD_MB,
                                                             "max_upload_pixels": UPLOAD_PIXELS})
    report, _ = run_index(settings, library)
    assert report.indexed == 8
    return library, settings


@pytest.fixture(scope="module")
def client(library_and_settings: tuple[Path, Settings]) -> Iterator[FlaskClient]:
    app = create_app(library_and_settings[1])
    app.config["TESTING"] = True
    service_of(app).warm_up()
    yield app.test_client()


def post(client: FlaskClient, data: bytes, name: str, query: str = ""):  # type: ignore[no-untyped-def]
    return client.post(f"/api/v1/search{query}", data={"image": (io.BytesIO(data), name)},
                       content_type="multipart/form-data")


def assert_healthy(client: FlaskClient) -> None:
    assert client.get("/healthz").status_code == 200
    response = post(client, A_JPEG, "ok.jpg", "?k=2")
    assert response.status_code == 200 and len(response.get_json()["results"]) == 2


@pytest.mark.parametrize(("data", "name", "query", "status", "code", "detail"), [u[1:] for u in UPLOADS],
                         ids=[u[0] for u in UPLOADS])
def test_hostile_upload_gets_a_problem(client: FlaskClient, data: bytes, name: str, query: str, status: int,
                                       code: str, detail: str) -> None:
    body = assert_problem(post(client, data, name, query), status, code, detail)
    assert body["instance"] == "/api/v1/search"
    if code in ("invalid_parameter", "unknown_class"):
        assert body["parameter"] in query
    elif status in (415, 422):
        assert body["field"] == "image"
    assert_healthy(client)


BOMB_RUN = """
import io, json, re, sys
from pathlib import Path
from indexer.settings import load_settings
from search_api import create_app

def peak_mb():
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1)) / 1024

def rss_mb():
    return int(re.search(r"VmRSS:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1)) / 1024

app = create_app(load_settings())
app.extensions["lookalike"].warm_up()
client = app.test_client()
def post(data, name):
    return client.post("/api/v1/search?k=2", data={"image": (io.BytesIO(data), name)},
                       content_type="multipart/form-data").status_code
good = Path(sys.argv[2]).read_bytes()
assert post(good, "ok.jpg") == 200
peak, rss = peak_mb(), rss_mb()
statuses = [post(bomb.read_bytes(), bomb.name) for _ in range(10) for bomb in sorted(Path(sys.argv[1]).iterdir())]
assert post(good, "ok.jpg") == 200
print(json.dumps({"statuses": statuses, "peak_growth_mb": peak_mb() - peak, "rss_growth_mb": rss_mb() - rss}))
"""


@pytest.mark.subprocess
def test_bombs_are_rejected_without_decoding(library_and_settings: tuple[Path, Settings], tf1_module: Path,
                                             tmp_path: Path) -> None:
    """Peak and current resident memory of a fresh server process barely move while every bomb is sent ten
    times (decoded in the serving process itself, to measure the decoder, not the decode processes)."""
    bombs = tmp_path / "bombs"
    bombs.mkdir()
    for name, data in BOMBS.items():
        (bombs / f"{name}.img").write_bytes(data)
    (tmp_path / "ok.jpg").write_bytes(A_JPEG)
    settings = library_and_settings[1]
    env = subprocess_env(settings.storage.data_dir, tf1_module, LOOKALIKE_API__MAX_UPLOAD_MB=str(MAX_UPLOAD_MB),
                         LOOKALIKE_API__MAX_UPLOAD_PIXELS=str(UPLOAD_PIXELS), LOOKALIKE_API__DECODE_PROCESSES="0")
    done = subprocess.run([sys.executable, "-c", BOMB_RUN, str(bombs), str(tmp_path / "ok.jpg")], env=env,
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert set(result["statuses"]) == {422}
    assert result["peak_growth_mb"] < BOMB_MEMORY_MB, result
    assert result["rss_growth_mb"] < BOMB_MEMORY_MB, result


def test_malformed_requests(client: FlaskClient) -> None:
    cases = [
        (client.post("/api/v1/search", data=b'{"image": "x"}', content_type="application/json"), 415,
         "unsupported_media_type"),
        (client.post("/api/v1/search", data=b"garbage", content_type="multipart/form-data; boundary=zz"), 400,
         "missing_image"),
        (client.post("/api/v1/search", data={"img": (io.BytesIO(A_JPEG), "q.jpg")},
                     content_type="multipart/form-data"), 400, "missing_image"),
        (client.post("/api/v1/search", data={"image": "not a file"}, content_type="multipart/form-data"), 400,
         "missing_image"),
        (client.put("/api/v1/search"), 405, "method_not_allowed"),
        (client.get("/api/v1/images/1/similar?k=abc"), 400, "invalid_parameter"),
        (client.get("/api/v1/images/1/similar?min_score=-7"), 400, "invalid_parameter"),
        (client.get("/api/v1/images/99999999999999999999999/similar"), 404, "unknown_image"),
        (client.get("/api/v1/images/99999999999999999999999"), 404, "unknown_image"),
        (client.get("/api/v1/images/9223372036854775808/file"), 404, "unknown_image"),
        (client.get("/api/v1/images/-1"), 404, "not_found"),
    ]
    for response, status, code in cases:
        assert_problem(response, status, code)
    assert_healthy(client)


TRAVERSALS = [
    "/api/v1/images/../../../etc/passwd",
    "/api/v1/images/..%2f..%2f..%2fetc%2fpasswd/file",
    "/api/v1/images/%2e%2e/%2e%2e/etc/passwd/file",
    "/api/v1/images/1/file/../../../../etc/passwd",
    "/api/v1/images//etc/passwd/file",
    "/api/v1/images/%2Fetc%2Fpasswd/file",
    "/api/v1/images/1%00/file",
    "/api/v1/images/1/file%2f..%2f..%2fetc%2fpasswd",
    "//etc/passwd",
    "/api/v1/images/1/..%252f..%252fetc%252fpasswd",
]


@pytest.mark.parametrize("url", TRAVERSALS)
def test_path_traversal_is_refused(client: FlaskClient, url: str) -> None:
    response = client.get(url)
    text = response.get_data(as_text=True)
    assert "root:" not in text
    assert response.status_code == 404 or (response.status_code == 200 and response.mimetype == "image/jpeg"), text
    if response.status_code == 404:
        assert_problem(response, 404, response.get_json(force=True)["code"])
    assert_healthy(client)


def test_symlinks_never_serve_files_outside_the_library(client: FlaskClient,
                                                        library_and_settings: tuple[Path, Settings]) -> None:
    library, settings = library_and_settings
    catalog = Catalog(settings.storage.resolved_database_url())
    try:
        paths = {Path(record.path).name: image_id
                 for image_id, record in catalog.get_images(list(range(1, 100))).items()}
    finally:
        catalog.close()
    assert "link-out.jpg" not in paths  # the indexer does not follow a link out of the library
    # An indexed file replaced by a link to a file outside the library afterwards is not served.
    victim = library / "red0.jpg"
    original = victim.read_bytes()
    served = client.get(f"/api/v1/images/{paths['red0.jpg']}/file")
    assert served.status_code == 200 and served.data == original
    victim.unlink()
    os.symlink(library.parent / "outside" / "secret.jpg", victim)
    try:
        assert_problem(client.get(f"/api/v1/images/{paths['red0.jpg']}/file"), 404, "file_missing")
        os.unlink(victim)
        os.symlink("/etc/passwd", victim)
        response = client.get(f"/api/v1/images/{paths['red0.jpg']}/file")
        assert "root:" not in response.get_data(as_text=True)
        assert_problem(response, 404, "file_missing")
    finally:
        victim.unlink()
        victim.write_bytes(original)
    assert_healthy(client)


def test_a_rejected_upload_is_freed_with_its_request(client: FlaskClient) -> None:
    """Nothing of a refused upload outlives its request: no reference cycle through the error's traceback
    keeps the bytes until the garbage collector happens to run (with many threads, hundreds of MB)."""
    # Fixed bytes: random ones that happen to hold an end-of-image marker can make a JPEG that decodes.
    garbage = np.random.default_rng(7).bytes(60_000)
    uploads = [png_text_bomb(900_000), jpeg(colour_image(RED, (400, 300)))[:-2000] + garbage]
    assert_healthy(client)
    gc.collect()
    gc.disable()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(10):
            for data in uploads:
                assert post(client, data, "q.png").status_code == 422
                assert client.post("/api/v1/search", data=data, content_type="image/png").status_code == 422
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        gc.enable()
    assert kept < 2 * 2**20, f"{kept / 2**20:.1f} MiB kept after 40 refused uploads of about 1 MB"
