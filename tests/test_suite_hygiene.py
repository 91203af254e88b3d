"""The suite's own guard: every process a test starts carries the run's mark and is found if it survives."""

from __future__ import annotations

import os
import subprocess
import sys

from helpers import RUN_MARK, survivors


def test_a_child_that_outlives_its_test_is_found_even_when_orphaned() -> None:
    mark = os.environ[RUN_MARK]
    # A grandchild whose parent exits at once: reparented to init, it is no longer our descendant.
    spawner = subprocess.run(
        [sys.executable, "-c", "import subprocess, sys; "
         "print(subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], "
         "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).pid)"],
        capture_output=True, text=True, timeout=30, check=True)
    orphan = int(spawner.stdout.strip())
    try:
        assert orphan in {p.pid for p in survivors(mark)}
    finally:
        os.kill(orphan, 9)
    assert orphan not in {p.pid for p in survivors(mark, grace_seconds=5)}
