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
from collections.abc import Iterator
from contextlib import contextmanager

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


@contextmanager
def ctrl_c_held_back() -> Iterator[None]:
    """Start child processes in this block: they are born with Ctrl-C (SIGINT) blocked.

    A terminal's Ctrl-C goes to every process of the job. A Python child still starting up has
    no handler yet and dies of it with a "Fatal Python error"; the process that started it is the
    one that decides when it ends. The mask is per thread and inherited through fork and exec, so
    blocking it in this thread only is enough (another thread of this process takes the signal
    meanwhile; one that arrives for this thread waits until the block ends, not lost). The child
    then ignores SIGINT (`ignore_ctrl_c`), which drops one that came while it was starting.
    """
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def ignore_ctrl_c() -> None:
    """In a child started under `ctrl_c_held_back`: Ctrl-C is for the parent, which ends this process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # discards one that came while starting
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
