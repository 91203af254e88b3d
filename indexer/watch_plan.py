"""What a watcher's batch has to do: the paths and folders events named, compared with the catalog.

The rules of a full scan (indexer.plan) applied to a few paths. A file is a candidate when it is
new or changed; it is forgotten only when it is positively gone: it is not there and the nearest
folder above it that is there lists fine, or it is no longer a regular image file a scan would find.
Absence is not deletion: nothing is removed under a root that is missing or empty while the catalog
holds files of it (an unmounted disk, a share that is down), nor under what cannot be read.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from indexer.images import IMAGE_EXTENSIONS
from indexer.plan import Plan
from indexer.scan import FoundFile, ScanProblems, scan
from storage.catalog import Catalog
from storage.file_states import file_states, holds_files_under, rejected_states
from storage.paths import printable

log = logging.getLogger(__name__)

_MISSING = (FileNotFoundError, NotADirectoryError)


@dataclass
class Changes:
    """What events said changed: files (created, written, moved, deleted) and folders to check whole."""

    files: set[str] = field(default_factory=set)
    folders: set[str] = field(default_factory=set)  # moved or deleted folders: every file under them

    def __bool__(self) -> bool:
        return bool(self.files or self.folders)

    def update(self, other: Changes) -> None:
        self.files |= other.files
        self.folders |= other.folders


def root_of(path: str, roots: Iterable[str]) -> str | None:
    """The (innermost) library root `path` lies in, or None."""
    best = None
    for root in roots:
        if (path == root or path.startswith(root.rstrip(os.sep) + os.sep)) and (best is None or len(root) > len(best)):
            best = root
    return best


def is_hidden(path: str, root: str) -> bool:
    """Whether a component of `path` below `root` starts with "." (scans skip those)."""
    return any(part.startswith(".") for part in Path(os.path.relpath(path, root)).parts)


def is_image_name(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def root_present(catalog: Catalog, root: str) -> bool:
    """Whether `root` is there to be trusted: a folder, and not empty while the catalog holds files of it
    (the mount point of an unmounted disk)."""
    try:
        with os.scandir(root) as listing:
            if next(listing, None) is not None:
                return True
    except OSError:
        return False
    return not holds_files_under(catalog, root)


def positively_gone(path: str, root: str) -> bool:
    """Whether `path` is known not to be there: the nearest folder above it that exists (up to `root`)
    lists fine, or a non-folder stands where a folder on its way was."""
    try:
        os.lstat(path)
        return False
    except _MISSING:
        pass
    except OSError:
        return False
    parent = os.path.dirname(path)
    while True:
        try:
            st = os.lstat(parent)
        except _MISSING:
            if len(parent) <= len(root):
                return False  # the root itself is gone: that removes nothing
            parent = os.path.dirname(parent)
            continue
        except OSError:
            return False
        if not stat.S_ISDIR(st.st_mode):
            return len(parent) > len(root)
        try:
            with os.scandir(parent):
                return True
        except OSError:
            return False


def _found(path: str, root: str, st: os.stat_result) -> FoundFile | None:
    """The file as a scan would find it, or None when a scan would not (not a regular image file, or
    reached through a symbolic link)."""
    if not stat.S_ISREG(st.st_mode) or not is_image_name(path):
        return None
    parent = os.path.dirname(path)
    if os.path.realpath(parent) != parent:
        return None
    return FoundFile(path, root, st.st_size, st.st_mtime_ns)


@dataclass
class _RootBatch:
    root: str
    found: dict[str, FoundFile] = field(default_factory=dict)
    gone: set[str] = field(default_factory=set)  # paths known not to be there (forgotten if the catalog has them)
    problems: ScanProblems = field(default_factory=ScanProblems)
    known_paths: list[str] | None = None

    def check_file(self, path: str) -> None:
        try:
            st = os.lstat(path)
        except _MISSING:
            if positively_gone(path, self.root):
                self.gone.add(path)
            return
        except OSError as exc:
            self.problems.files[path] = f"cannot stat: {exc.strerror or exc}"
            return
        found = _found(path, self.root, st)
        if found is None:
            self.gone.add(path)
        else:
            self.found[path] = found

    def check_folder(self, folder: str, catalog: Catalog) -> None:
        """Every file under `folder`: scanned when it is a folder; else gone when it positively is."""
        try:
            st = os.lstat(folder)
            is_folder = stat.S_ISDIR(st.st_mode)
        except _MISSING:
            st, is_folder = None, False
        except OSError as exc:
            self.problems.folders[folder] = f"cannot list folder: {exc.strerror or exc}"
            return
        if is_folder:
            for found in scan(Path(self.root), self.problems, start=Path(folder)):
                self.found[found.path] = found
        elif st is None and not positively_gone(folder, self.root):
            return
        prefix = folder.rstrip(os.sep) + os.sep
        known = [p for p in self._known(catalog) if p.startswith(prefix)]
        self.gone.update(p for p in known if p not in self.found and not self.problems.covers(p, self.root))

    def _known(self, catalog: Catalog) -> list[str]:
        """The paths the catalog holds (files and rejections) under the root, read once per batch."""
        if self.known_paths is None:
            self.known_paths = [*catalog.files_under(self.root), *catalog.rejected_under(self.root)]
        return self.known_paths


def root_identity(root: str) -> tuple[int, int] | None:
    """The device and inode of the folder at `root`, or None when there is none: an unmounted disk leaves
    another folder (its mount point) at the same path, a renamed one leaves nothing or another folder."""
    try:
        st = os.stat(root)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None


def plan_changes(catalog: Catalog, roots: Sequence[str], changes: Changes,
                 present: Callable[[str], bool] | None = None) -> Plan:
    """Compare what `changes` names with the catalog; nothing is written. Paths outside `roots`, hidden
    ones and those under a root that is not `present` (default: root_present) are left alone."""
    present_now = present or (lambda root: root_present(catalog, root))
    batches: dict[str, _RootBatch] = {}
    checked: dict[str, bool] = {}

    def batch_for(path: str) -> _RootBatch | None:
        root = root_of(path, roots)
        if root is None or path == root or is_hidden(path, root):
            return None
        if root not in checked:
            checked[root] = present_now(root)
            if not checked[root]:
                log.warning("library root %s is not there: changes under it wait for it to return",
                            printable(root))
        return batches.setdefault(root, _RootBatch(root)) if checked[root] else None

    for folder in sorted(changes.folders):
        if (batch := batch_for(folder)) is not None:
            batch.check_folder(folder, catalog)
    for path in sorted(changes.files):
        if (batch := batch_for(path)) is not None and path not in batch.found:
            batch.check_file(path)
    plan = Plan()
    for root, batch in batches.items():
        plan.scan_problems[root] = batch.problems
        _compare(catalog, batch, plan)
    return plan


def _compare(catalog: Catalog, batch: _RootBatch, plan: Plan) -> None:
    """Sort a root's found files into candidates, unchanged and skipped, and its gone ones into removals."""
    paths = set(batch.found) | batch.gone
    known = file_states(catalog, paths)
    rejected = rejected_states(catalog, paths)
    for path in sorted(batch.found):
        found = batch.found[path]
        state, rejection = known.get(path), rejected.get(path)
        if rejection is not None and rejection.skips(found.size, found.mtime_ns):
            plan.skipped += 1
        elif rejection is None and state is not None and (state.size, state.mtime_ns) == (found.size,
                                                                                         found.mtime_ns):
            plan.unchanged += 1
        else:
            plan.candidates.append(found)
    plan.removed.extend(p for p in sorted(batch.gone) if p in known or p in rejected)
    plan.kept += sum(1 for p in batch.problems.files if p in known)
