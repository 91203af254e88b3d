from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from helpers import REPO

from indexer.settings import DEFAULT_HANDLE, Settings, SettingsError, load_settings

CONFIG = REPO / "config.yaml"


def test_config_yaml_holds_every_setting_with_its_default() -> None:
    from_file = yaml.safe_load(CONFIG.read_text())
    defaults = Settings().model_dump(mode="json")
    assert from_file == defaults


def test_every_setting_in_config_yaml_has_a_comment() -> None:
    lines = CONFIG.read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^  [a-z_]+:", line):
            assert lines[i - 1].strip().startswith("#") or lines[i - 2].strip().startswith("#"), line


def test_contract_keys_and_defaults() -> None:
    s = load_settings(config_file=CONFIG, environ={})
    assert s.model.handle == DEFAULT_HANDLE == "https://tfhub.dev/google/efficientnet/b4/classification/1"
    assert s.model.image_size == 380
    # Relative paths are made absolute once, against the working directory.
    assert s.storage.data_dir == Path.cwd() / "data" and s.storage.data_dir.is_absolute()
    assert s.storage.database_url is None
    assert s.storage.resolved_database_url() == f"sqlite:///{(Path('data') / 'catalog.db').resolve()}"


def test_file_then_environment_override(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  handle: /models/b4\n  image_size: 300\nstorage:\n  data_dir: /srv/lookalike\n")
    s = load_settings(cfg, environ={"LOOKALIKE_MODEL__IMAGE_SIZE": "224",
                                    "LOOKALIKE_STORAGE__DATABASE_URL": "postgresql+psycopg://db/x"})
    assert s.model.handle == "/models/b4"
    assert s.model.image_size == 224
    assert s.storage.data_dir == Path("/srv/lookalike")
    assert s.storage.resolved_database_url() == "postgresql+psycopg://db/x"


def test_config_file_from_environment_variable(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("api:\n  port: 9000\n")
    assert load_settings(environ={"LOOKALIKE_CONFIG": str(cfg)}).api.port == 9000


@pytest.mark.parametrize(
    ("text", "env", "named"),
    [
        ("model:\n  image_size: huge\n", {}, "model.image_size"),
        ("model:\n  image_size: 0\n", {}, "model.image_size"),
        ("storage:\n  data_dri: x\n", {}, "storage.data_dri: unknown setting"),
        ("search:\n  class_min_probability: 2\n", {}, "search.class_min_probability"),
        ("", {"LOOKALIKE_API__PORT": "70000"}, "api.port"),
        ("", {"LOOKALIKE_PORT": "1"}, "LOOKALIKE_PORT"),
        ("model: [1, 2]\n", {}, "model"),
        ("- just\n- a list\n", {}, "expected a mapping"),
        ("model: {handle: [unclosed\n", {}, "not valid YAML"),
    ],
)
def test_invalid_settings_name_the_key(tmp_path: Path, text: str, env: dict[str, str], named: str) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    with pytest.raises(SettingsError) as err:
        load_settings(cfg, environ=env)
    assert named in str(err.value)


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="nope.yaml: not found"):
        load_settings(tmp_path / "nope.yaml", environ={})
