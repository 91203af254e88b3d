"""`lookalike demo`: a sample library of real photos, indexed and served, even on an offline machine.

The configured model is used when it can be loaded. When TF Hub cannot be reached, the demo
(and only the demo) falls back to EfficientNet-Lite0 built from a PyPI package, and says so
loudly: it is a smaller stand-in, not EfficientNet-B4.
"""

from __future__ import annotations

import re
from pathlib import Path

import click
import yaml

from indexer.model import ModelUnavailableError, configured_model_id, is_remote, resolve_handle, stand_in_note
from indexer.packaged_model import IMAGE_SIZE as PACKAGE_IMAGE_SIZE
from indexer.packaged_model import PACKAGE_HANDLE
from indexer.settings import Settings


def banner(text: str) -> None:
    line = "!" * min(100, max(len(text), 40))
    click.secho(f"{line}\n{text}\n{line}", fg="yellow", bold=True, err=True)


def choose_demo_model(settings: Settings) -> Settings:
    """The configured model if it resolves; the packaged stand-in when the hub is unreachable."""
    m = settings.model
    try:
        resolve_handle(m.handle, m.download_timeout)
        return settings
    except ModelUnavailableError as exc:
        if not is_remote(m.handle):
            raise
        banner(f"TF Hub cannot be reached, so {m.handle} cannot be downloaded:\n  {exc}\n"
               f"The demo falls back to {stand_in_note(PACKAGE_HANDLE)}.\n"
               "Its vectors and labels come from that smaller model; to use B4 offline, see README "
               "'Offline and air-gapped servers'.")
    model = m.model_copy(update={"handle": PACKAGE_HANDLE, "image_size": PACKAGE_IMAGE_SIZE})
    return settings.model_copy(update={"model": model})


def demo_settings(settings: Settings, folder: Path) -> Settings:
    """Settings for the demo: the chosen model, with a data dir of its own per model."""
    chosen = choose_demo_model(settings)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", configured_model_id(chosen.model)).strip("-")
    # Validated, not copied: the data dir is made absolute like every configured one.
    storage = type(chosen.storage).model_validate({**chosen.storage.model_dump(),
                                                   "data_dir": folder / "data" / slug[-80:]})
    return chosen.model_copy(update={"storage": storage})


def write_demo_config(settings: Settings, folder: Path) -> Path:
    """`<folder>/config.yaml` holding every setting the demo used (data dir absolute), for the CLI and `serve`."""
    path = folder / "config.yaml"
    data = settings.model_dump(mode="json")
    data["storage"]["data_dir"] = str(Path(settings.storage.data_dir).resolve())
    header = ("# Settings of the lookalike demo in this folder, written by `lookalike demo`.\n"
              f"# Use them with: lookalike --config {path} stats\n")
    path.write_text(header + yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def usage_lines(config: Path, library: Path, host: str, port: int) -> list[str]:
    """The commands a newcomer can copy to use the demo's data from another terminal."""
    photo = library / "photos" / "chelsea.jpg"
    lookalike = f"lookalike --config {config}"
    return [
        f"open http://{host}:{port}/ in a browser, or from another terminal (after `. .venv/bin/activate`):",
        f"  curl -F image=@{photo} 'http://{host}:{port}/api/v1/search?k=5'",
        f"  {lookalike} search {photo}",
        f"  {lookalike} similar {photo}",
        f"  {lookalike} stats",
        f"  {lookalike} duplicates",
    ]
