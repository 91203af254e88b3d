"""Shared fixtures: tiny real TF-Hub models, real image files, settings in a temp dir."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from model_fixtures import build_tf1_hub_module, build_tf2_saved_model  # noqa: E402

from indexer.settings import Settings, load_settings  # noqa: E402

TEST_IMAGE_SIZE = 64

POSTGRES_URL = os.environ.get("LOOKALIKE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def postgres_answers() -> bool:
    """Whether the PostgreSQL server of the tests answers (its cases are skipped, saying so, when not)."""
    import sqlalchemy as sa

    try:
        with sa.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3}).connect():
            return True
    except Exception:
        return False

RED = (220, 30, 30)
GREEN = (30, 200, 40)
BLUE = (30, 40, 220)


@pytest.fixture(scope="session")
def tf1_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tf1_hub_module(tmp_path_factory.mktemp("models") / "tf1", train_graph=True)


@pytest.fixture(scope="session")
def tf2_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tf2_saved_model(tmp_path_factory.mktemp("models") / "tf2")


@pytest.fixture(scope="session")
def tf1_module_1001(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tf1_hub_module(tmp_path_factory.mktemp("models") / "tf1_1001", num_classes=1001)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def make_settings(data_dir: Path, handle: Path | str, **sections: dict[str, object]) -> Settings:
    """Settings for a test: the given model at 64x64, storage in `data_dir`, no config file or env."""
    overrides: dict[str, dict[str, object]] = {
        "model": {"handle": str(handle), "image_size": TEST_IMAGE_SIZE, "batch_size": 4},
        "storage": {"data_dir": str(data_dir)},
        # Threads start faster than worker processes; tests that need processes ask for them.
        "indexer": {"decode_workers": 2, "commit_every": 4, "decode_in_processes": False},
    }
    for section, values in sections.items():
        overrides[section] = {**overrides.get(section, {}), **values}
    return load_settings(config_file=None, environ={}, overrides=overrides)


@pytest.fixture
def settings_for(tmp_path: Path, tf1_module: Path) -> Callable[..., Settings]:
    def factory(handle: Path | str | None = None, **sections: dict[str, object]) -> Settings:
        return make_settings(tmp_path / "data", handle or tf1_module, **sections)

    return factory


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


@pytest.fixture
def colour_library(tmp_path: Path) -> Path:
    """14 images: 6 red (goldfish), 5 blue (jellyfish), 3 green (tree frog), in nested folders and formats."""
    return make_colour_library(tmp_path / "library")


def make_colour_library(root: Path) -> Path:
    """The `colour_library` fixture's files, written under `root` (for fixtures of a wider scope)."""
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
