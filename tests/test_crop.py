"""model.crop_fraction: the centre crop the model sees, the same for indexing and queries, part of the model id."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from flask.testing import FlaskClient
from helpers import RED, assert_problem, catalog_of, colour_image, env_for, jpeg, run_index, search, write_image
from PIL import Image

from indexer.catalog_crop import MANIFEST_PATH, indexed_model_id, keep_catalog_crop
from indexer.images import decode_image, model_input
from indexer.model import configured_model_id, model_id
from indexer.prepare import FilePreparer, PrepareConfig
from indexer.scan import FoundFile
from indexer.settings import Settings, SettingsError, eval_crop_fraction, load_settings
from lookalike.cli import cli
from search_api.app import create_app
from search_api.upload_decoder import DecodePool, DecodeRequest, InlineDecoder
from storage.vector_index import MANIFEST, IndexMismatchError

INSIDE = (200, 30, 30)
BORDER = (20, 40, 220)


def framed(width: int, height: int, inner: int) -> Image.Image:
    """BORDER everywhere except a centred `inner` x `inner` square of INSIDE."""
    arr = np.empty((height, width, 3), np.uint8)
    arr[:] = BORDER
    top, left = (height - inner) // 2, (width - inner) // 2
    arr[top:top + inner, left:left + inner] = INSIDE
    return Image.fromarray(arr, "RGB")


def is_colour(pixels: np.ndarray, colour: tuple[int, int, int], tolerance: int = 0) -> np.ndarray:
    return np.all(np.abs(pixels.astype(int) - colour) <= tolerance, axis=-1)


# --- the region -------------------------------------------------------------------------------


@pytest.mark.parametrize(("width", "height"), [(256, 256), (320, 256), (256, 400)])
def test_the_crop_is_exactly_the_fraction_of_the_shorter_side(width: int, height: int) -> None:
    # 224 of 256 is 7/8: at scale 1 every output pixel is one source pixel, so the square inside is all
    # there is, and nothing of the border.
    out = model_input(framed(width, height, 224), 224, 224 / 256)
    assert is_colour(out, INSIDE).all()
    # The whole centre square shows the border: 16 source pixels of 256, 14 of the 224 output pixels.
    full = model_input(framed(width, height, 224), 224, 1.0)
    for edge in (full[:13], full[-13:], full[:, :13], full[:, -13:]):
        assert is_colour(edge, BORDER, 2).all()
    assert is_colour(full[15:-15, 15:-15], INSIDE, 2).all()


def test_a_downscaled_crop_keeps_the_border_out_but_for_the_resampling_edge() -> None:
    # 512 px with a 32 px border at 7/8 and 224 output pixels: the crop is the inner 448 px, halved.
    out = model_input(framed(512, 512, 448), 224, 0.875)
    assert is_colour(out[2:-2, 2:-2], INSIDE, 1).all()
    # Bicubic at half scale reads two source pixels beyond the box: the outermost output pixels blend in
    # a little border (under 15%), the next ring only ringing of the filter.
    assert is_colour(out, INSIDE, 30).all() and not is_colour(out[0], INSIDE, 1).all()
    # A smaller fraction takes less: at 0.5 the 256 central px are shown, larger than 224 output px.
    arr = np.asarray(framed(512, 512, 448)).copy()
    arr[128:384, 128:384] = (0, 200, 0)
    half = model_input(Image.fromarray(arr), 224, 0.5)
    assert is_colour(half[2:-2, 2:-2], (0, 200, 0), 1).all()


def test_decode_draws_enough_pixels_for_the_crop() -> None:
    # A JPEG is decoded at a reduced DCT scale when it is much larger than needed; the crop must still
    # get at least `size` source pixels, so a cropped decode is as sharp as a full one.
    image = framed(1600, 1200, 1200)
    data = jpeg(image)
    out = decode_image(data, 224, 10**8, crop_fraction=0.875)
    reference = model_input(image, 224, 0.875)
    assert np.abs(out.pixels.astype(int) - reference).mean() < 2.0
    assert (out.width, out.height) == (1600, 1200)


# --- settings and the model id ----------------------------------------------------------------------


def test_auto_is_the_efficientnet_evaluation_crop() -> None:
    assert eval_crop_fraction(224) == 224 / 256 and eval_crop_fraction(380) == 380 / 412
    s = load_settings(config_file=None, environ={})
    assert s.model.crop_fraction == "auto" and s.model.effective_crop_fraction() == 380 / 412
    lite = load_settings(config_file=None, environ={}, overrides={"model": {"image_size": 224}})
    assert lite.model.effective_crop_fraction() == 0.875
    env = load_settings(config_file=None, environ={"LOOKALIKE_MODEL__CROP_FRACTION": "1.0"})
    assert env.model.effective_crop_fraction() == 1.0
    assert load_settings(config_file=None, environ={"LOOKALIKE_MODEL__CROP_FRACTION": "AUTO"}).model.crop_fraction \
        == "auto"


@pytest.mark.parametrize("value", ["0", "1.5", "-0.5", "huge", "true", "[]"])
def test_a_crop_outside_zero_to_one_is_refused_by_name(tmp_path: Path, value: str) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model:\n  crop_fraction: {value}\n")
    with pytest.raises(SettingsError, match=r"model\.crop_fraction: .*auto or a number in \(0, 1\]"):
        load_settings(cfg, environ={})


def test_the_model_id_changes_with_the_crop(tf1_module: Path) -> None:
    handle = "https://tfhub.dev/google/efficientnet/b4/classification/1"
    assert model_id(handle, 380) == model_id(handle, 380, 1.0) == f"{handle}@380"  # as before the setting
    assert model_id(handle, 380, 380 / 412) == f"{handle}@380/crop=0.92233"
    ids = {model_id(str(tf1_module), 64, f) for f in (1.0, 0.875, 0.5, 64 / 96)}
    assert len(ids) == 4
    auto = Settings.model_validate({"model": {"handle": handle, "image_size": 224}})
    assert configured_model_id(auto.model) == f"{handle}@224/crop=0.875"


# --- indexing and queries -------------------------------------------------------------------------


def test_a_crop_change_needs_a_reindex(settings_for: Callable[..., Settings], colour_library: Path,
                                       tf2_module: Path) -> None:
    full = settings_for(model={"crop_fraction": 1.0})
    run_index(full, colour_library)
    cropped = settings_for(model={"crop_fraction": 0.75})
    with pytest.raises(IndexMismatchError, match="--reindex") as err:
        run_index(cropped, colour_library)
    assert configured_model_id(cropped.model) in str(err.value)
    assert "Only the crop differs: the catalog was indexed with model.crop_fraction 1.0;" in str(err.value)
    # The server says the same, and serves nothing from vectors of the other crop.
    client = create_app(cropped).test_client()
    assert_problem(search(client, jpeg(colour_image(RED))), 503, "model_mismatch", "lookalike index --reindex")
    other_model = settings_for(tf2_module, model={"crop_fraction": 0.75})
    with pytest.raises(IndexMismatchError) as err:
        run_index(other_model, colour_library)
    assert "Only the crop differs" not in str(err.value)  # another module: a crop would not help
    report, counter = run_index(cropped, colour_library, reindex=True)
    assert report.indexed == 14 and counter.embedded == 14
    assert catalog_of(cropped).model_ids() == {configured_model_id(cropped.model)}


def edge_heavy(seed: int) -> Image.Image:
    """A photo stand-in whose border differs from its centre, so that the crop changes what the model sees."""
    rng = np.random.default_rng(seed)
    arr = np.empty((90, 120, 3), np.uint8)
    arr[:] = rng.integers(0, 255, 3)
    arr[25:65, 40:80] = rng.integers(0, 255, 3)
    return Image.fromarray(arr, "RGB")


def test_indexing_and_queries_prepare_the_same_pixels(tmp_path: Path, settings_for: Callable[..., Settings]) -> None:
    settings = settings_for(model={"crop_fraction": 0.6})
    m = settings.model
    path = write_image(tmp_path / "lib" / "a.jpg", edge_heavy(1), quality=92)
    data = path.read_bytes()
    catalog_of(settings).close()
    indexed = FilePreparer(PrepareConfig.from_settings(settings))(FoundFile(str(path), str(path.parent), 0, 0))
    assert indexed.decoded is not None
    # As the server asks for it (search_api.service): drafted to cover the thumbnail too, as the indexer does.
    request = DecodeRequest(m.image_size, 10**8, "x", max(m.image_size, settings.indexer.thumbnail_size),
                            crop_fraction=m.effective_crop_fraction())
    query = InlineDecoder(wait_seconds=30.0).decode(data, request)
    assert np.array_equal(indexed.decoded.pixels, query)
    assert not np.array_equal(query, decode_image(data, m.image_size, 10**8).pixels)  # the crop matters here


@pytest.mark.subprocess
def test_decode_processes_apply_the_crop_too() -> None:
    data = jpeg(edge_heavy(2))
    pool = DecodePool(1, cpu_seconds=5.0, memory_mb=512, wait_seconds=60.0)
    try:
        for fraction in (1.0, 0.6):
            got = pool.decode(data, DecodeRequest(64, 10**8, "x", crop_fraction=fraction))
            assert np.array_equal(got, decode_image(data, 64, 10**8, crop_fraction=fraction).pixels)
    finally:
        pool.close()


def test_an_indexed_photo_finds_itself_at_score_one(tmp_path: Path, settings_for: Callable[..., Settings]) -> None:
    settings = settings_for(model={"crop_fraction": 0.6})
    library = tmp_path / "lib"
    for i in range(4):
        write_image(library / f"p{i}.png", edge_heavy(10 + i))
    run_index(settings, library)
    client: FlaskClient = create_app(settings).test_client()
    for i in range(4):
        body = search(client, (library / f"p{i}.png").read_bytes(), "?k=1", name="q.png").get_json()
        top = body["results"][0]
        assert top["path"].endswith(f"p{i}.png") and top["score"] > 0.9999
    stats = client.get("/api/v1/stats").get_json()
    assert stats["model"]["crop_fraction"] == 0.6 and stats["model_id"].endswith("/crop=0.6")


def test_a_png_upload_decodes_to_the_crop_of_its_image() -> None:
    # A PNG upload decodes to the same model input as the image it holds.
    image = edge_heavy(3)
    buf = io.BytesIO()
    image.save(buf, "PNG")
    assert np.array_equal(decode_image(buf.getvalue(), 64, 10**8, crop_fraction=0.6).pixels,
                          model_input(image, 64, 0.6))


def test_auto_keeps_the_whole_square_of_a_library_indexed_before_the_crop(colour_library: Path, tmp_path: Path,
                                                                           tf1_module: Path) -> None:
    """An upgrade never makes a working library refuse its own vectors; an explicit crop still asks to reindex."""
    env = env_for(tmp_path / "data", tf1_module)
    full = {**env, "LOOKALIKE_MODEL__CROP_FRACTION": "1.0"}
    assert CliRunner().invoke(cli, ["index", str(colour_library)], env=full).exit_code == 0
    query = tmp_path / "red.jpg"
    write_image(query, colour_image(RED))
    found = CliRunner().invoke(cli, ["search", str(query), "--json"], env=env)  # auto, the default
    assert found.exit_code == 0, found.output
    assert CliRunner().invoke(cli, ["index", str(colour_library)], env=env).exit_code == 0  # nothing to redo
    explicit = {**env, "LOOKALIKE_MODEL__CROP_FRACTION": "0.75"}
    refused = CliRunner().invoke(cli, ["index", str(colour_library)], env=explicit)
    assert refused.exit_code != 0 and "--reindex" in refused.output


def test_auto_stays_the_evaluation_crop_for_new_libraries(settings_for: Callable[..., Settings],
                                                         colour_library: Path) -> None:
    settings = settings_for()
    assert keep_catalog_crop(settings) is settings  # nothing indexed yet
    run_index(settings, colour_library)
    assert "/crop=" in str(indexed_model_id(settings.storage.data_dir))
    assert keep_catalog_crop(settings).model.effective_crop_fraction() == eval_crop_fraction(settings.model.image_size)
    assert MANIFEST_PATH.name == MANIFEST
