from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import yaml
from helpers import REPO

from indexer.model import Embedder
from indexer.settings import DEFAULT_HANDLE, ModelSettings, Settings, SettingsError, load_settings
from indexer.settings_doc import config_example, section_models, setting_docs
from storage.class_rule import ClassRule
from storage.index_factory import IndexConfig

CONFIG = REPO / "config.yaml"


def test_every_setting_and_section_has_a_description() -> None:
    missing = [f"{section}.{key}" for section, model in section_models().items()
               for key, field in model.model_fields.items() if not (field.description or "").strip()]
    missing += [section for section, field in Settings.model_fields.items() if not (field.description or "").strip()]
    assert not missing, f"settings without Field(description=...): {missing}"
    assert len(list(setting_docs())) == sum(len(values) for values in Settings().model_dump().values())


def test_config_yaml_is_what_the_settings_generate() -> None:
    """The file's keys, defaults and comments all come from the models: regenerate it with
    `lookalike config example > config.yaml` after changing a setting."""
    assert CONFIG.read_text(encoding="utf-8") == config_example()


def test_config_yaml_holds_every_setting_with_its_default() -> None:
    from_file = yaml.safe_load(CONFIG.read_text())
    defaults = Settings().model_dump(mode="json")
    assert from_file == defaults


def test_each_key_in_the_example_sits_under_its_own_description() -> None:
    """Not a comment somewhere above: the comment lines directly above the key say exactly its description."""
    lines = config_example().splitlines()
    section = ""
    seen = []
    for i, line in enumerate(lines):
        if line and not line.startswith((" ", "#")):
            section = line.rstrip(":")
        elif line.startswith("  ") and not line.lstrip().startswith("#"):
            key = line.strip().split(":", 1)[0]
            above = []
            for previous in reversed(lines[:i]):
                if not previous.startswith("  # "):
                    break
                above.insert(0, previous[len("  # "):])
            seen.append((f"{section}.{key}", " ".join(above)))
    assert seen == [(doc.dotted, " ".join(doc.description.split())) for doc in setting_docs()]


def test_defaults_have_one_definition() -> None:
    """Storage keeps its own defaults (it takes no settings); the settings read them, and the rest
    of the code reads the settings."""
    settings = Settings()
    assert settings.storage.index_config() == IndexConfig()
    assert settings.search.class_rule() == ClassRule()
    parameters = inspect.signature(Embedder.__init__).parameters
    assert parameters["download_timeout"].default == ModelSettings().download_timeout
    assert parameters["precision"].default == ModelSettings().precision
    assert settings.indexer.served_thumbnail_size() == settings.indexer.thumbnail_size
    no_thumbnails = load_settings(environ={"LOOKALIKE_CONFIG": "", "LOOKALIKE_INDEXER__THUMBNAIL_SIZE": "0"})
    assert no_thumbnails.indexer.served_thumbnail_size() == settings.indexer.thumbnail_size


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


def test_empty_config_variable_means_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text("api:\n  port: 9100\n")
    assert load_settings(environ={}).api.port == 9100  # unset: ./config.yaml
    assert load_settings(environ={"LOOKALIKE_CONFIG": ""}).api.port == 8000  # set but empty: defaults only
    assert load_settings(tmp_path / "config.yaml", environ={"LOOKALIKE_CONFIG": ""}).api.port == 9100


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
