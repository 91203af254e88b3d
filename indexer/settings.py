"""Typed settings: config.yaml defaults, an optional YAML file, then LOOKALIKE_* environment overrides.

Every key is declared once here with its default; config.yaml at the repository root mirrors
these defaults with one comment per key (a test keeps the two in step).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from storage.faults import ENV_VARS as FAULT_ENV_VARS

if TYPE_CHECKING:  # imported where used: every command reads the settings, and `search` must start fast
    from storage.class_rule import ClassRule
    from storage.index_factory import IndexConfig

DEFAULT_HANDLE = "https://tfhub.dev/google/efficientnet/b4/classification/1"
ENV_PREFIX = "LOOKALIKE_"
CONFIG_ENV = "LOOKALIKE_CONFIG"


class SettingsError(ValueError):
    """A setting is invalid; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSettings(_Section):
    handle: str = Field(DEFAULT_HANDLE, min_length=1)
    image_size: int = Field(380, ge=32, le=2048)
    batch_size: int = Field(0, ge=0, le=1024)
    download_timeout: float = Field(60.0, gt=0)
    precision: Literal["float32", "mixed_float16", "mixed_bfloat16"] = "float32"


class StorageSettings(_Section):
    data_dir: Path = Path("data")
    database_url: str | None = None
    index: str = Field("auto", min_length=1)
    index_memory_mb: int = Field(2048, ge=16)
    exact_max_vectors: int = Field(50_000, ge=0)
    exact_budget_ms: float = Field(10.0, ge=0)
    nprobe: int = Field(0, ge=0)
    recall_target: float = Field(0.98, gt=0, le=1)
    ef_search: int = Field(64, ge=1)
    mmap_index: bool = True

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        """Resolved once, against the directory lookalike starts in: a server or library that later
        resolves paths against another folder (Flask's send_file uses its package folder) never sees
        a relative one."""
        return Path(os.path.abspath(value.expanduser()))

    @field_validator("database_url")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        return value or None

    def index_config(self) -> IndexConfig:
        from storage.index_factory import IndexConfig

        return IndexConfig(
            factory=self.index,
            memory_budget_bytes=self.index_memory_mb * 2**20,
            exact_max_vectors=self.exact_max_vectors,
            nprobe=self.nprobe,
            ef_search=self.ef_search,
            exact_budget_ms=self.exact_budget_ms,
            recall_target=self.recall_target,
        )

    def resolved_database_url(self) -> str:
        """The configured URL, or SQLite inside the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'catalog.db').resolve()}"


class IndexerSettings(_Section):
    decode_workers: int = Field(0, ge=0, le=256)
    max_image_pixels: int = Field(178_956_970, ge=1)
    commit_every: int = Field(256, ge=1)
    decode_in_processes: bool = True
    thumbnail_size: int = Field(320, ge=0, le=2048)
    publish_every_seconds: float = Field(600.0, ge=0)

    def effective_decode_workers(self) -> int:
        return self.decode_workers or (os.cpu_count() or 1)


class SearchSettings(_Section):
    default_k: int = Field(10, ge=1)
    max_k: int = Field(1000, ge=1)
    class_min_probability: float = Field(0.2, ge=0.0, le=1.0)
    max_offset: int = Field(10_000, ge=0)
    dedupe_threshold: float = Field(0.95, ge=-1.0, le=1.0)

    def class_rule(self, rule: str = "top5", min_probability: float | None = None) -> ClassRule:
        """When an image counts as showing a class; top-5 matches need `class_min_probability` unless given."""
        from storage.class_rule import ClassRule

        return ClassRule(rule, self.class_min_probability if min_probability is None else min_probability)


class ApiSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    max_upload_mb: float = Field(32.0, gt=0)
    max_upload_pixels: int = Field(50_000_000, ge=1)
    workers: int = Field(1, ge=1, le=64)
    threads: int = Field(64, ge=1, le=1024)
    read_timeout: float = Field(60.0, gt=0, le=3600)
    send_timeout: float = Field(60.0, gt=0, le=3600)
    decode_processes: int = Field(2, ge=0, le=64)
    decode_cpu_seconds: float = Field(2.0, gt=0, le=600)
    decode_memory_mb: int = Field(1024, ge=64)
    model_concurrency: int = Field(1, ge=1, le=64)
    queue_timeout: float = Field(30.0, gt=0, le=3600)
    upload_memory_mb: int = Field(256, ge=1)
    max_batch_images: int = Field(16, ge=1, le=1024)
    max_form_parts: int = Field(64, ge=2)

    @model_validator(mode="after")
    def _parts_hold_a_full_batch(self) -> ApiSettings:
        if self.max_form_parts < self.max_batch_images:
            raise ValueError(f"api.max_form_parts ({self.max_form_parts}) must be at least "
                             f"api.max_batch_images ({self.max_batch_images})")
        return self


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class Settings(_Section):
    model: ModelSettings = ModelSettings()
    storage: StorageSettings = StorageSettings()
    indexer: IndexerSettings = IndexerSettings()
    search: SearchSettings = SearchSettings()
    api: ApiSettings = ApiSettings()
    logging: LoggingSettings = LoggingSettings()


def _env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """LOOKALIKE_MODEL__HANDLE=x becomes {"model": {"handle": "x"}}."""
    out: dict[str, dict[str, str]] = {}
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX) or key == CONFIG_ENV or key in FAULT_ENV_VARS:
            continue
        parts = key[len(ENV_PREFIX):].lower().split("__")
        if len(parts) != 2:
            raise SettingsError(
                f"environment variable {key}: expected {ENV_PREFIX}<SECTION>__<KEY>, "
                f"e.g. {ENV_PREFIX}MODEL__HANDLE"
            )
        out.setdefault(parts[0], {})[parts[1]] = value
    return out


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for section, values in extra.items():
        if isinstance(values, Mapping) and isinstance(merged.get(section), Mapping):
            merged[section] = {**merged[section], **values}
        else:
            merged[section] = values
    return merged


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SettingsError(f"config file {path}: not found") from None
    except yaml.YAMLError as exc:
        raise SettingsError(f"config file {path}: not valid YAML ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"config file {path}: expected a mapping of sections at the top level")
    return data


def _format_validation_error(exc: ValidationError, source: str) -> str:
    problems = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            problems.append(f"{key}: unknown setting")
        else:
            problems.append(f"{key}: {err['msg']} (got {err.get('input')!r})")
    return f"invalid settings in {source}: " + "; ".join(problems)


def _config_path(config_file: str | os.PathLike[str] | None, environ: Mapping[str, str]) -> Path | None:
    if config_file is not None:
        return Path(config_file)
    if environ.get(CONFIG_ENV):
        return Path(environ[CONFIG_ENV])
    if Path("config.yaml").is_file():
        return Path("config.yaml")
    return None


def load_settings_with_sources(
    config_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[Settings, dict[str, str]]:
    """Settings plus, for every "section.key", where its value came from (default, file, environment)."""
    environ = os.environ if environ is None else environ
    path = _config_path(config_file, environ)
    from_file = _read_yaml(path) if path else {}
    from_env = _env_overrides(environ)
    data = _merge(_merge(from_file, from_env), overrides or {})
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        source = f"{path}" if path else "defaults"
        raise SettingsError(_format_validation_error(exc, f"{source} and {ENV_PREFIX}* variables")) from None
    sources: dict[str, str] = {}
    for section, values in settings.model_dump().items():
        for key in values:
            if key in (overrides or {}).get(section, {}):
                origin = "override"
            elif key in from_env.get(section, {}):
                origin = f"environment {ENV_PREFIX}{section.upper()}__{key.upper()}"
            elif isinstance(from_file.get(section), Mapping) and key in from_file[section]:
                origin = f"config file {path}"
            else:
                origin = "default"
            sources[f"{section}.{key}"] = origin
    return settings, sources


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """Build settings from defaults, the config file, LOOKALIKE_* variables and explicit overrides.

    The file is `config_file`, else $LOOKALIKE_CONFIG, else ./config.yaml when it exists.
    """
    return load_settings_with_sources(config_file, environ, overrides)[0]
