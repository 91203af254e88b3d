"""Generate indexer/data/imagenet1k_concepts.tsv: the WordNet concepts above the ImageNet-1k classes.

Run at development time only (the product never reads WordNet at run time):

    apt-get install -y wordnet-base          # WordNet 3.0 data files under /usr/share/wordnet
    python tools/generate_imagenet_hierarchy.py [--wordnet /usr/share/wordnet] [--output FILE]

ImageNet classes are WordNet 3.0 noun synsets (their wnid is "n" + the synset offset). This walks
the hypernym (`@`) and instance hypernym (`@i`) pointers of data.noun upwards from every class and
keeps each ancestor synset that covers at least MIN_CLASSES classes. Output columns: wnid, names
(the synset's lemma names, underscores as spaces, joined by "; "), class_ids (the ImageNet class
ids below it, ascending, runs written as "151-268", separated by spaces). Rows are sorted by wnid.
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LABELS = ROOT / "indexer" / "data" / "imagenet1k_labels.tsv"
OUT = ROOT / "indexer" / "data" / "imagenet1k_concepts.tsv"
WORDNET = Path("/usr/share/wordnet")
MIN_CLASSES = 2
HYPERNYM_POINTERS = {"@", "@i"}
NAME_SEPARATOR = "; "


def parse_data_noun(path: Path) -> tuple[dict[str, tuple[str, ...]], dict[str, tuple[str, ...]]]:
    """(lemma names by wnid, hypernym wnids by wnid) from WordNet's data.noun."""
    names: dict[str, tuple[str, ...]] = {}
    parents: dict[str, tuple[str, ...]] = {}
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if line.startswith("  "):  # licence header
                continue
            fields = line.split(" | ", 1)[0].split()
            wnid = "n" + fields[0]
            word_count = int(fields[3], 16)
            words = fields[4:4 + 2 * word_count:2]
            pos = 4 + 2 * word_count
            pointer_count = int(fields[pos])
            pointers = [fields[pos + 1 + 4 * i: pos + 5 + 4 * i] for i in range(pointer_count)]
            names[wnid] = tuple(w.replace("_", " ") for w in words)
            parents[wnid] = tuple("n" + p[1] for p in pointers if p[0] in HYPERNYM_POINTERS and p[2] == "n")
    return names, parents


def imagenet_wnids(labels: Path) -> list[str]:
    with labels.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [row["wnid"] for row in sorted(rows, key=lambda r: int(r["class_id"]))]


def ancestors(wnid: str, parents: dict[str, tuple[str, ...]]) -> set[str]:
    """Every synset above `wnid` (not itself), through all hypernym paths."""
    seen: set[str] = set()
    todo = list(parents[wnid])
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(parents[current])
    return seen


def id_ranges(ids: Iterable[int]) -> str:
    """Ascending ids with runs collapsed: [1, 2, 3, 7] -> "1-3 7"."""
    parts: list[str] = []
    ordered = sorted(ids)
    start = prev = ordered[0]
    for i in [*ordered[1:], None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    return " ".join(parts)


def build(wordnet_dir: Path, labels: Path = LABELS) -> str:
    """The concepts file's text."""
    names, parents = parse_data_noun(wordnet_dir / "data.noun")
    wnids = imagenet_wnids(labels)
    missing = [w for w in wnids if w not in names]
    if missing:
        raise SystemExit(f"{len(missing)} ImageNet wnids are not WordNet 3.0 noun synsets, e.g. {missing[:3]}")
    below: dict[str, set[int]] = {}
    for class_id, wnid in enumerate(wnids):
        for ancestor in ancestors(wnid, parents):
            below.setdefault(ancestor, set()).add(class_id)
    lines = ["wnid\tnames\tclass_ids"]
    for wnid in sorted(below):
        class_ids = below[wnid]
        if len(class_ids) < MIN_CLASSES:
            continue
        if any(NAME_SEPARATOR.strip() in n for n in names[wnid]):
            raise SystemExit(f"lemma names of {wnid} contain the separator {NAME_SEPARATOR!r}: {names[wnid]}")
        lines.append(f"{wnid}\t{NAME_SEPARATOR.join(names[wnid])}\t{id_ranges(class_ids)}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--wordnet", type=Path, default=WORDNET, help="directory holding WordNet 3.0 data.noun")
    parser.add_argument("--output", type=Path, default=OUT, help="file to write")
    args = parser.parse_args()
    if not (args.wordnet / "data.noun").is_file():
        raise SystemExit(f"no WordNet data.noun in {args.wordnet}: apt-get install wordnet-base")
    args.output.write_text(build(args.wordnet), encoding="utf-8")


if __name__ == "__main__":
    main()
