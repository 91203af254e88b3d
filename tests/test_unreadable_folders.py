"""Absence is not deletion: a folder that cannot be listed, or a file that cannot be read, keeps its
images; it is reported, listed by `lookalike errors`, and forgotten once it reads again.

The test suite runs as root, which reads everything, so the runs that must meet the permission
errors are real `lookalike index` processes started by `setpriv` without the two capabilities
that let root ignore file permissions (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH): a root process
without them meets `chmod 000` like any user. As an ordinary user the test needs no such step.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import BLUE, RED, catalog_of, colour_image, env_for, make_settings, run_index, subprocess_env, write_image

from indexer.settings import Settings
from lookalike.cli import cli

pytestmark = pytest.mark.subprocess


def _unprivileged() -> list[str]:
    """The command prefix that runs a program bound by file permissions."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv (util-linux): cannot give up reading every file")
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--"]


@pytest.fixture
def shared_dir(tmp_path: Path) -> Iterator[Path]:
    """A temp folder whose closed folders are opened again before pytest cleans it up."""
    yield tmp_path.resolve()
    for folder, dirs, _files in os.walk(tmp_path):
        for name in dirs:
            os.chmod(os.path.join(folder, name), 0o755)


def _index_unprivileged(settings: Settings, library: Path, tf1_module: Path, home: Path) -> dict:
    env = subprocess_env(settings.storage.data_dir, tf1_module, TF_CPP_MIN_LOG_LEVEL="3",
                         LOOKALIKE_INDEXER__DECODE_WORKERS="2")
    done = subprocess.run([*_unprivileged(), sys.executable, "-m", "lookalike", "index", "--json", str(library)],
                          env=env, capture_output=True, timeout=300, cwd=home)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    report = json.loads(done.stdout.decode().splitlines()[-1])
    report["stderr"] = done.stderr.decode(errors="replace")
    return report


def test_unreadable_folders_and_files_keep_their_images(shared_dir: Path, tf1_module: Path) -> None:
    library = shared_dir / "library"
    for i in range(2):
        write_image(library / f"top{i}.jpg", colour_image(RED, seed=i, accent=(200, 40 * i, 30)), quality=90)
        write_image(library / "sub" / f"inner{i}.png", colour_image(BLUE, seed=10 + i, accent=(30, 40 * i, 200)))
    write_image(library / "deep" / "deeper" / "x.png", colour_image(BLUE, seed=20))
    settings = make_settings(shared_dir / "data", tf1_module)
    first, _ = run_index(settings, library)  # as root: everything readable
    assert first.indexed == 5

    sub, top = library / "sub", library / "top1.jpg"
    (sub / "inner1.png").unlink()  # gone, but nobody cannot see that while the folder is closed
    sub.chmod(0o000)
    top.chmod(0o000)
    os.utime(top, ns=(time.time_ns(), time.time_ns() + 10**9))  # changed: it must be read again
    report = _index_unprivileged(settings, library, tf1_module, shared_dir)
    assert report["removed"] == 0, report
    assert report["kept"] == 2 and report["unchanged"] == 2
    assert [(u["path"], u["kind"]) for u in report["unreadable"]] == [(str(sub), "unreadable_folder")]
    (failure,) = report["failures"]
    assert failure["path"] == str(top) and failure["kind"] == "unreadable"
    assert "cannot list folder" in report["stderr"]
    catalog = catalog_of(settings)
    try:
        assert catalog.count_images() == 5 and catalog.count_files() == 5
        assert catalog.image_id_for_path(str(top)) is not None
    finally:
        catalog.close()
    listed = CliRunner().invoke(cli, ["errors", "--json"], env=env_for(settings.storage.data_dir, tf1_module))
    assert {(e["path"], e["kind"]) for e in json.loads(listed.stdout)} == {(str(sub), "unreadable_folder"),
                                                                          (str(top), "unreadable")}

    # The whole root unreadable: nothing is removed, and no "drive unmounted" refusal either.
    library.chmod(0o000)
    report = _index_unprivileged(settings, library, tf1_module, shared_dir)
    library.chmod(0o755)
    assert (report["removed"], report["kept"]) == (0, 5), report
    assert [u["path"] for u in report["unreadable"]] == [str(library)]

    # Readable again: the file that really went is removed now, the rest is as before, the errors are gone.
    sub.chmod(0o755)
    top.chmod(0o644)
    report = _index_unprivileged(settings, library, tf1_module, shared_dir)
    assert (report["removed"], report["kept"], report["unreadable"], report["failed"]) == (1, 0, [], 0), report
    assert report["linked"] == 1  # top1.jpg read again: same content
    catalog = catalog_of(settings)
    try:
        assert catalog.count_images() == 4 and catalog.rejections() == []
    finally:
        catalog.close()
