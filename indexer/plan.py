"""What a run has to do, decided from a scan of the library against the catalog before anything is touched.

Absence is not deletion: only a file positively known to be gone (its folder listed fine and the
name is not there, or it is no longer a regular file) is planned for removal. What lies under a
folder that could not be listed, or a file that could not be stat'ed, is kept as the catalog knows it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from indexer.scan import FoundFile, RootError, ScanProblems, resolve_root, scan
from storage.catalog import Catalog
from storage.paths import printable
from storage.rejections import UNREADABLE, UNREADABLE_FOLDER, Rejection

log = logging.getLogger(__name__)


@dataclass
class Plan:
    """What a run has to do, decided from a scan before anything is touched."""

    candidates: list[FoundFile] = field(default_factory=list)  # new or changed files
    removed: list[str] = field(default_factory=list)  # files that disappeared
    unchanged: int = 0
    skipped: int = 0  # rejected before and unchanged since
    kept: int = 0  # catalog files under a folder or entry the scan could not check: kept as they are
    scan_problems: dict[str, ScanProblems] = field(default_factory=dict)  # by root

    def unreadable(self) -> list[Rejection]:
        """What the scan could not check, as records for `lookalike errors`."""
        out = []
        for root, problems in self.scan_problems.items():
            out += [Rejection(path, root, 0, 0, UNREADABLE_FOLDER, error) for path, error in problems.folders.items()]
            out += [Rejection(path, root, 0, 0, UNREADABLE, error) for path, error in problems.files.items()]
        return out


def plan_run(catalog: Catalog, roots: Sequence[str], allow_empty_roots: bool = False) -> Plan:
    """Scan every root and compare it with the catalog; nothing is written.

    A root the catalog knows files of that now scans empty (an unmounted drive) is refused
    unless `allow_empty_roots`.
    """
    resolved = [resolve_root(r) for r in roots]  # every root checked before anything is touched
    plan = Plan()
    gone_rejections: list[str] = []
    for root in resolved:
        root_name = str(root)
        known = catalog.files_under(root_name)
        rejected = catalog.rejected_under(root_name)
        problems = plan.scan_problems[root_name] = ScanProblems()
        seen: set[str] = set()
        for found in scan(root, problems):
            seen.add(found.path)
            state = known.get(found.path)
            rejection = rejected.get(found.path)
            if rejection is not None and rejection.skips(found.size, found.mtime_ns):
                plan.skipped += 1
            elif (rejection is None and state is not None and state.size == found.size
                  and state.mtime_ns == found.mtime_ns):
                plan.unchanged += 1
            else:  # new, changed, or unreadable last time (retried on every run)
                plan.candidates.append(found)
        if known and not seen and not problems and not allow_empty_roots:
            raise RootError(
                f"{printable(root_name)}: no image files found, but the catalog holds {len(known):,} from this "
                "folder. Is the drive unmounted? Nothing was removed. If the photos really are gone, run again "
                "with --allow-empty-root."
            )
        for path in sorted(set(known) - seen):
            if problems.covers(path, root_name):
                plan.kept += 1
            else:
                plan.removed.append(path)
        gone_rejections.extend(p for p in sorted(set(rejected) - seen) if not problems.covers(p, root_name))
    plan.removed.extend(gone_rejections)  # forgetting a path also forgets its rejection
    return plan


def record_scan_problems(catalog: Catalog, plan: Plan) -> list[dict[str, str]]:
    """List what the scan could not check under `lookalike errors` (clearing folders that read again);
    returns it as the report's `unreadable` entries."""
    unreadable = plan.unreadable()
    for root in plan.scan_problems:
        under = [r for r in unreadable if r.root == root]
        catalog.record_scan_problems(root, [r for r in under if r.kind == UNREADABLE_FOLDER],
                                     [r for r in under if r.kind != UNREADABLE_FOLDER])
    if unreadable:
        log.warning("%d folder(s) or file(s) could not be read; the %d catalog file(s) under them are kept",
                    len(unreadable), plan.kept)
    return [{"path": r.path, "kind": r.kind, "error": r.reason} for r in unreadable]
