"""`class=label:<name>`: custom labels in the class filters of search, browse and autocompletion."""

from __future__ import annotations

from collections.abc import Sequence

from indexer.label_names import LABEL_PREFIX, LabelError, split_label_filters
from search_api.label_jobs import label_jobs
from search_api.problems import ApiProblem
from search_api.results import browsed_json, class_match_json, label_match_json, listing_json
from search_api.service import SearchService
from storage.class_rule import ClassRule
from storage.label_queries import browse_with_labels, labels_of_images, member_counts
from storage.labels import label_names


def label_filters(values: Sequence[str]) -> tuple[int, ...]:
    """Ids of the custom labels named by `class=label:<name>` values; unknown or stale labels are refused."""
    names = split_label_filters(values)
    if not names:
        return ()
    try:
        return label_jobs().book().resolve(names)
    except LabelError as exc:
        raise ApiProblem(exc.status, str(exc), exc.code, parameter="class") from None


def browse_labelled(svc: SearchService, class_ids: frozenset[int] | None, labels: tuple[int, ...],
                    rule: ClassRule, offset: int, limit: int) -> dict[str, object]:
    """GET /api/v1/images with custom labels among the filters: classes and labels ranked together."""
    entries, total = browse_with_labels(svc.catalog, class_ids, rule, labels, offset, limit)
    records = svc.catalog.get_images([e.image_id for e in entries])
    found = labels_of_images(svc.catalog, list(records), svc.model_id)
    names = {label_id: name for label_id, name, _ in label_names(svc.catalog)}
    listed = [browsed_json(records[e.image_id], found.get(e.image_id, []), e.confidence,
                           class_match_json(e.class_id or 0) if e.label_id is None
                           else label_match_json(names.get(e.label_id, "")))
              for e in entries if e.image_id in records]  # an image removed since the page was read is left out
    return listing_json(listed, total, offset, limit)


def label_suggestions(svc: SearchService, query: str) -> list[dict[str, object]]:
    """Custom labels for the class autocompletion: every label without `query`, else those whose names
    contain it (after an optional "label:"), exact names first, then prefixes, then by image count."""
    text = query.strip().casefold()
    if text.startswith(LABEL_PREFIX):
        text = text[len(LABEL_PREFIX):].strip()
    counts = member_counts(svc.catalog)
    found: list[tuple[tuple[bool, bool, int, str], dict[str, object]]] = []
    for label_id, name, model in label_names(svc.catalog):
        key = name.casefold()
        if text and text not in key:
            continue
        count = counts.get(label_id, 0) if model == svc.model_id else 0
        found.append(((key != text, not key.startswith(text), -count, key),
                      {"kind": "label", "class_id": None, "name": f"{LABEL_PREFIX}{name}", "label": name,
                       "count": count}))
    found.sort(key=lambda pair: pair[0])
    return [suggestion for _, suggestion in found]
