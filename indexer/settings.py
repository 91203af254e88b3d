"""Typed settings: defaults, an optional YAML file, then LOOKALIKE_* environment overrides.

Every key is declared once here, with its default and its description; config.yaml at the
repository root is generated from them (indexer/settings_doc.py, `lookalike config example`),
and `lookalike config show` prints them. Other modules read a setting, or its default from
here, rather than restating it; storage's own defaults (IndexConfig, ClassRule) are read here.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from indexer.tf_runtime import Precision
from storage.class_rule import ClassRule
from storage.faults import ENV_VARS as FAULT_ENV_VARS
from storage.index_config import IndexConfig

DEFAULT_HANDLE = "https://tfhub.dev/google/efficientnet/b4/classification/1"
ENV_PREFIX = "LOOKALIKE_"
CONFIG_ENV = "LOOKALIKE_CONFIG"


# EfficientNet's evaluation preprocessing: resize the shorter side to size + 32, take the centre size x size.
CROP_PADDING = 32


def eval_crop_fraction(image_size: int) -> float:
    """Fraction of the shorter side that the EfficientNet evaluation crop keeps at this input size."""
    return image_size / (image_size + CROP_PADDING)


class SettingsError(ValueError):
    """A setting is invalid; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_INDEX = IndexConfig()  # storage's defaults for choosing and searching an index: one definition, there
MB = 2**20


class ModelSettings(_Section):
    """The image model that turns photos into feature vectors and ImageNet predictions."""

    handle: str = Field(default=DEFAULT_HANDLE, min_length=1, description=(
        "TF-Hub handle: a tfhub.dev URL, a local module directory, a local .tar.gz of a module, or "
        "package:efficientnet-lite0 (a smaller real model built from a PyPI package; not B4)."))
    image_size: int = Field(default=380, ge=32, le=2048, description=(
        "Square input size in pixels the model expects (380 for EfficientNet-B4, 224 for Lite0)."))
    batch_size: int = Field(default=0, ge=0, le=1024, description=(
        "Images per forward pass; 0 picks one for the device (8 on a CPU, 64 on a GPU)."))
    download_timeout: float = Field(default=60.0, gt=0, description=(
        "Seconds to wait on the network while downloading the model before giving up."))
    precision: Precision = Field(default="auto", description=(
        "auto (float32 on a CPU, mixed_float16 on a GPU), float32, mixed_float16 (GPU) or mixed_bfloat16 "
        "(CPUs with bf16 support: faster, but changes some labels); outputs stay float32."))
    crop_fraction: float | Literal["auto"] = Field(default="auto", description=(
        "Side of the centre square the model sees, as a fraction of the shorter side (0 < f <= 1). "
        "auto: image_size / (image_size + 32), the crop EfficientNets were evaluated with (224/256 for "
        "Lite0, 380/412 for B4; better labels). 1.0: the whole centre square, as before. Part of the model "
        "id: changing it means re-indexing (lookalike index --reindex)."))

    @field_validator("crop_fraction", mode="before")
    @classmethod
    def _fraction_or_auto(cls, value: object) -> float | str:
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        try:
            if isinstance(value, bool):
                raise TypeError
            fraction = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ValueError("must be auto or a number in (0, 1]") from None
        if not 0.0 < fraction <= 1.0:
            raise ValueError("must be auto or a number in (0, 1]: greater than 0, at most 1")
        return fraction

    def effective_crop_fraction(self) -> float:
        """The crop actually applied: auto is the EfficientNet evaluation crop for this input size."""
        return eval_crop_fraction(self.image_size) if self.crop_fraction == "auto" else float(self.crop_fraction)


class StorageSettings(_Section):
    """Where the catalog and the index live, and how the index is chosen and searched."""

    data_dir: Path = Field(default=Path("data"), description=(
        "Folder holding the catalog (SQLite by default), the FAISS index files and the thumbnails."))
    database_url: str | None = Field(default=None, description=(
        "SQLAlchemy database URL; empty means SQLite at <data_dir>/catalog.db."))
    index: str = Field(default=_INDEX.factory, min_length=1, description=(
        'FAISS index type: auto (chosen from collection size and memory budget) or a FAISS factory '
        'string such as "Flat", "IVF4096,SQ8", "HNSW32", "OPQ64,IVF4096,PQ64".'))
    index_memory_mb: int = Field(default=_INDEX.memory_budget_bytes // MB, ge=16, description=(
        "Memory the index may use, in megabytes; auto quantises vectors when they would not fit."))
    exact_max_vectors: int = Field(default=_INDEX.exact_max_vectors, ge=0, description=(
        "Upper bound for exact search under auto: above this many vectors auto builds an IVF index "
        "even when the scan would fit exact_budget_ms (exact search needs both)."))
    exact_budget_ms: float = Field(default=_INDEX.exact_budget_ms, ge=0, description=(
        "auto uses exact search while one query's scan of every vector takes at most this many "
        "milliseconds (timed on this machine when the index is built), an inverted-file (IVF) index "
        "above; a library that grows past it switches at the next publish."))
    nprobe: int = Field(default=_INDEX.nprobe, ge=0, description=(
        "Inverted lists visited per query by IVF indexes (more = better recall, slower). 0: the "
        "smallest number reaching recall_target, measured on the collection when the index is built."))
    recall_target: float = Field(default=_INDEX.recall_target, gt=0, le=1, description=(
        "recall@10 against exact search that the measured nprobe must reach (queries drawn from the "
        "collection itself)."))
    ef_search: int = Field(default=_INDEX.ef_search, ge=1, description=(
        "Candidate list size per query for HNSW indexes."))
    mmap_index: bool = Field(default=True, description=(
        "The search API maps the index file instead of reading it: server processes share its pages."))
    upload_dir: Path | None = Field(default=None, description=(
        "Where images added over HTTP (POST /api/v1/images) are kept, named by their content; empty: "
        "<data_dir>/uploads."))

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
        return IndexConfig(
            factory=self.index,
            memory_budget_bytes=self.index_memory_mb * MB,
            exact_max_vectors=self.exact_max_vectors,
            nprobe=self.nprobe,
            ef_search=self.ef_search,
            exact_budget_ms=self.exact_budget_ms,
            recall_target=self.recall_target,
        )

    def resolved_upload_dir(self) -> Path:
        """The configured upload folder, or `uploads` inside the data directory."""
        return Path(os.path.abspath(self.upload_dir.expanduser())) if self.upload_dir else self.data_dir / "uploads"

    def resolved_database_url(self) -> str:
        """The configured URL, or SQLite inside the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'catalog.db').resolve()}"


class IndexerSettings(_Section):
    """How `lookalike index` reads, decodes and commits a library."""

    roots: list[Path] = Field(default_factory=list, description=(
        "The library: folders that `lookalike index` with no PATH, `lookalike watch` and `serve --watch` keep in "
        "step, e.g. [~/Pictures, /mnt/photos]. In LOOKALIKE_INDEXER__ROOTS, separated by \":\"."))
    decode_workers: int = Field(default=0, ge=0, le=256, description=(
        "Workers reading, hashing and decoding images while the model runs; 0 picks the number of CPU cores."))
    max_image_pixels: int = Field(default=178_956_970, ge=1, description=(
        "Images larger than this many pixels are rejected as decompression bombs."))
    commit_every: int = Field(default=256, ge=1, description=(
        "Files written to the catalog per transaction; a crash loses at most this much work."))
    decode_in_processes: bool = Field(default=True, description=(
        "Decode in worker processes (true) or in threads of the indexer process (false)."))
    thumbnail_size: int = Field(default=320, ge=0, le=2048, description=(
        "Longest side of the WebP previews written at index time, in pixels; 0 writes none (the server "
        "then makes previews of the default size on request)."))
    publish_every_seconds: float = Field(default=600.0, ge=0, description=(
        "During a long run, publish the index this often (seconds) so new images become searchable; "
        "0: only at the end."))
    watch_poll_seconds: float = Field(default=0.0, ge=0, description=(
        "A watcher (`lookalike watch`, `serve --watch`) also polls the roots this often, in seconds, for file "
        "systems that send no change events (NFS, SMB shares); 0: events only."))
    settle_seconds: float = Field(default=2.0, ge=0, le=3600, description=(
        "A watcher indexes a file being written once it is closed, or once its size and modification time have "
        "not changed for this many seconds."))
    rescan_hours: float = Field(default=24.0, ge=0, description=(
        "A watcher scans every root in full this often (hours), catching changes no event reported; 0: only when "
        "it starts."))

    @field_validator("roots", mode="before")
    @classmethod
    def _split_roots(cls, value: object) -> object:
        """A string (an environment variable) holds roots separated by os.pathsep; empty means none."""
        if isinstance(value, str):
            return [part for part in value.split(os.pathsep) if part]
        return value

    @field_validator("roots")
    @classmethod
    def _absolute_roots(cls, value: list[Path]) -> list[Path]:
        """Resolved once against the starting directory, like storage.data_dir."""
        return [Path(os.path.abspath(root.expanduser())) for root in value]

    def effective_decode_workers(self) -> int:
        return self.decode_workers or (os.cpu_count() or 1)

    def served_thumbnail_size(self) -> int:
        """Longest side of previews made on request: thumbnail_size, or its default when the indexer writes none."""
        return self.thumbnail_size or int(type(self).model_fields["thumbnail_size"].default)


class SearchSettings(_Section):
    """Limits and defaults of searches, from the API and the command line."""

    default_k: int = Field(default=10, ge=1, description="Results returned when the request gives no k.")
    max_k: int = Field(default=1000, ge=1, description="Largest k a request (or `lookalike search --k`) may ask for.")
    class_min_probability: float = Field(default=ClassRule().min_probability, ge=0.0, le=1.0, description=(
        "An image matches a class filter when the class is its top-1 prediction, or is in its top-5 with "
        "at least this probability (the API's class_min_probability and class_rule=top1 override it per "
        "request)."))
    max_offset: int = Field(default=10_000, ge=0, description=(
        "Largest `offset` (results skipped for pagination) a request may ask for."))
    dedupe_threshold: float = Field(default=0.95, ge=-1.0, le=1.0, description=(
        "With dedupe=true, results whose feature vectors have at least this cosine similarity are collapsed "
        "into the best-scoring one; also the default --threshold of `lookalike duplicates`."))

    def class_rule(self, rule: str = "top5", min_probability: float | None = None) -> ClassRule:
        """When an image counts as showing a class; top-5 matches need `class_min_probability` unless given."""
        return ClassRule(rule, self.class_min_probability if min_probability is None else min_probability)


class ApiSettings(_Section):
    """How `lookalike serve` listens, and what one request may cost."""

    host: str = Field(default="127.0.0.1", description="Address `lookalike serve` listens on.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port `lookalike serve` listens on.")
    max_upload_mb: float = Field(default=32.0, gt=0, description=(
        "Largest accepted request body (an uploaded image, or a whole batch) in megabytes."))
    max_upload_pixels: int = Field(default=50_000_000, ge=1, description=(
        "Largest uploaded query image in pixels (width x height): a small, highly compressed PNG can "
        "claim hundreds of megapixels and cost gigabytes to decode. Indexed files use "
        "indexer.max_image_pixels."))
    workers: int = Field(default=1, ge=1, le=64, description=(
        "Gunicorn worker processes (each loads its own copy of the model)."))
    threads: int = Field(default=64, ge=1, le=1024, description=(
        "Threads per worker answering requests. Most of them wait on slow clients or on the model: the "
        "model calls and decodes one worker runs at once are bounded on their own."))
    read_timeout: float = Field(default=60.0, gt=0, le=3600, description=(
        "Seconds a client may take to send one request (headers and body, from its first byte); slower "
        "connections are closed (a body cut short is answered 408). Behind a reverse proxy that buffers "
        "requests, this only ever sees the proxy."))
    send_timeout: float = Field(default=60.0, gt=0, le=3600, description=(
        "Seconds a client may take to read one response; slower connections are closed. Behind a reverse "
        "proxy that buffers responses, this only ever sees the proxy."))
    decode_processes: int = Field(default=2, ge=0, le=64, description=(
        "Child processes per worker that decode uploaded images, so that a decoder bomb costs the "
        "serving process nothing; 0 decodes in the request thread."))
    decode_cpu_seconds: float = Field(default=2.0, gt=0, le=600, description=(
        "CPU seconds one upload may take to decode; the decode process is ended and replaced past it."))
    decode_memory_mb: int = Field(default=1024, ge=64, description=(
        "Memory (MB) one decode may use beyond what the idle decode process holds."))
    model_concurrency: int = Field(default=1, ge=1, le=64, description=(
        "Model calls one worker runs at once (each already uses all of the worker's CPU threads)."))
    queue_timeout: float = Field(default=30.0, gt=0, le=3600, description=(
        "Seconds a request waits for a free decoder or model slot before it is answered 503 server_busy."))
    upload_memory_mb: int = Field(default=256, ge=1, description=(
        "Request bodies (uploads) one worker holds in memory at once, in MB; a large upload waits for its "
        "share (queue_timeout, then 503 server_busy). One upload of max_upload_mb always fits."))
    max_batch_images: int = Field(default=16, ge=1, le=1024, description=(
        "Most images one batch search (POST /api/v1/search/batch) may hold."))
    max_form_parts: int = Field(default=64, ge=2, description=(
        "Most multipart parts (files and fields) one request may hold; at least max_batch_images."))
    watch: bool = Field(default=False, description=(
        "Also run a watcher keeping the catalog in step with indexer.roots (one child process of the server, "
        "whatever the number of workers), as `lookalike serve --watch` does."))
    auth: Literal["auto", "none", "keys"] = Field(
        "auto", description="Who may use the API: keys (every request but /healthz and /readyz needs an API key, "
        "see `lookalike keys create`), none (anyone who reaches the port), auto (keys when serving on a "
        "non-loopback address or for requests a reverse proxy forwarded, none otherwise). docs/deployment.md "
        "explains serving to a network.")
    write_wait_seconds: float = Field(
        10.0, ge=0, le=600, description="Seconds an upload or removal over HTTP waits for a running indexer or "
        "watcher to let go of the catalog before it is answered 503 with Retry-After.")
    metrics_public: bool = Field(
        False, description="Serve /metrics without a key (for a Prometheus scraper on a trusted network); "
        "otherwise it needs a key of scope admin when keys are required.")

    def keys_required(self, host: str | None = None) -> bool:
        """Does serving on `host` (default: api.host) need API keys?"""
        if self.auth != "auto":
            return self.auth == "keys"
        return not is_loopback(self.host if host is None else host)

    @model_validator(mode="after")
    def _parts_hold_a_full_batch(self) -> ApiSettings:
        if self.max_form_parts < self.max_batch_images:
            raise ValueError(f"api.max_form_parts ({self.max_form_parts}) must be at least "
                             f"api.max_batch_images ({self.max_batch_images})")
        return self


def is_loopback(host: str) -> bool:
    """Is `host` a loopback address (or `localhost`)? Names and wildcard addresses count as reachable by others."""
    name = host.strip().strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    # A dual-stack socket shows an IPv4 peer as ::ffff:a.b.c.d (Python 3.11 calls ::ffff:127.0.0.1 not loopback).
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return (mapped or address).is_loopback


class LoggingSettings(_Section):
    """What the programs log."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO", description=(
        "DEBUG, INFO, WARNING or ERROR (-v on the command line shows DEBUG)."))


class Settings(_Section):
    model: ModelSettings = Field(default=ModelSettings(), description=ModelSettings.__doc__)
    storage: StorageSettings = Field(default=StorageSettings(), description=StorageSettings.__doc__)
    indexer: IndexerSettings = Field(default=IndexerSettings(), description=IndexerSettings.__doc__)
    search: SearchSettings = Field(default=SearchSettings(), description=SearchSettings.__doc__)
    api: ApiSettings = Field(default=ApiSettings(), description=ApiSettings.__doc__)
    logging: LoggingSettings = Field(default=LoggingSettings(), description=LoggingSettings.__doc__)


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


# libyaml's safe loader where PyYAML was built with it: the documented config.yaml is long, and every
# command and server worker reads it at start.
_SAFE_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_SAFE_LOADER)
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
    if CONFIG_ENV in environ:  # set but empty: no file at all
        return Path(environ[CONFIG_ENV]) if environ[CONFIG_ENV] else None
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

    The file is `config_file`, else $LOOKALIKE_CONFIG (set but empty: no file), else ./config.yaml
    when it exists.
    """
    return load_settings_with_sources(config_file, environ, overrides)[0]
