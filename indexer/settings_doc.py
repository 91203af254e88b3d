"""Each setting's help, as declared in indexer/settings.py: for `lookalike config show` and config.yaml.

config.yaml is generated from the models (`lookalike config example > config.yaml`), and a test checks
that the file in the repository is exactly what this module writes, so its comments and defaults
cannot drift from the code.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import BaseModel

from indexer.settings import ENV_PREFIX, Settings

WIDTH = 100  # longest comment line in the generated file
HEADER = f"""\
# lookalike settings. Every key is shown with its default and what it does; this file is written
# by `lookalike config example` from the settings' declarations (indexer/settings.py).
# Override any key with an environment variable: {ENV_PREFIX}<SECTION>__<KEY>, e.g.
#   {ENV_PREFIX}MODEL__HANDLE=/models/b4 {ENV_PREFIX}MODEL__IMAGE_SIZE=380 lookalike index ~/Pictures
# Relative paths are resolved against the directory lookalike is started from.
"""


@dataclass(frozen=True)
class SettingDoc:
    section: str
    key: str
    default: Any  # as YAML and JSON show it
    description: str

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.key}"


def section_models() -> dict[str, type[BaseModel]]:
    """Each section's name and model, in declaration order."""
    sections: dict[str, type[BaseModel]] = {}
    for name, field in Settings.model_fields.items():
        model = field.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel), name
        sections[name] = model
    return sections


def setting_docs() -> Iterator[SettingDoc]:
    """Every setting, in declaration order, with its default and description."""
    defaults = Settings().model_dump(mode="json")
    for section, model in section_models().items():
        for key, field in model.model_fields.items():
            yield SettingDoc(section, key, defaults[section][key], field.description or "")


def descriptions() -> dict[str, str]:
    """"section.key" -> what the setting does."""
    return {doc.dotted: doc.description for doc in setting_docs()}


def _comment(text: str, indent: str) -> list[str]:
    prefix = f"{indent}# "
    return textwrap.wrap(" ".join(text.split()), WIDTH, initial_indent=prefix, subsequent_indent=prefix,
                         break_long_words=False, break_on_hyphens=False)


def _value(key: str, value: Any) -> str:
    return yaml.safe_dump({key: value}, default_flow_style=False, width=10**6, sort_keys=False).strip()


def config_example() -> str:
    """config.yaml: every setting with its default, under a comment saying what it does."""
    lines = HEADER.splitlines()
    by_section: dict[str, list[SettingDoc]] = {}
    for doc in setting_docs():
        by_section.setdefault(doc.section, []).append(doc)
    for section, docs in by_section.items():
        lines += ["", *_comment(Settings.model_fields[section].description or "", ""), f"{section}:"]
        for doc in docs:
            lines += [*_comment(doc.description, "  "), f"  {_value(doc.key, doc.default)}"]
    return "\n".join(lines) + "\n"
