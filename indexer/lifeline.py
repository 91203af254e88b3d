"""Child processes that end with their parent, however the parent ends (kill -9 included).

A decode worker left behind by a killed indexer keeps ~100 MB, the catalog open, and
multiprocessing's resource tracker alive (the tracker exits only once every process holding
its pipe is gone). Two independent lifelines: the kernel's parent-death signal (Linux), and a
watchdog thread that notices the parent is gone (everywhere, and also if the kernel signal was
set up too late or by a thread that has since ended).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
WATCHDOG_SECONDS = 1.0


def _set_parent_death_signal() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _watch(parent_pid: int) -> None:
    stop = threading.Event()
    while not stop.wait(WATCHDOG_SECONDS):
        if os.getppid() != parent_pid:
            os._exit(1)  # the parent is gone: nothing here is worth finishing


def die_with_parent(parent_pid: int) -> None:
    """Make this process end when `parent_pid` (the process that started it) ends."""
    if not _set_parent_death_signal():
        log.debug("no parent-death signal on this platform; relying on the watchdog thread")
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)
    threading.Thread(target=_watch, args=(parent_pid,), name="parent-watchdog", daemon=True).start()
