"""Decode uploaded images outside the serving process: a few child processes with CPU and memory limits.

An upload is untrusted input for a decoder: a PNG of 143 kB can take 350 MB to decode, and formats
have more ways to ask for work than the cheap checks in indexer.decode_cost know. Decoding in the
request thread put all of that in the worker process that also holds the model and answers
/healthz. Here each upload is decoded by one of `api.decode_processes` child processes, which:

- returns only the model input (size x size x 3 bytes), never a Pillow object;
- has `api.decode_cpu_seconds` of CPU time per upload (ITIMER_PROF: the kernel ends it when spent)
  and `api.decode_memory_mb` of address space beyond what it uses idle (RLIMIT_AS);
- is killed after a wall-clock deadline as well, and replaced on next use;
- runs at a lower priority than the model;
- ends when the worker does: a closed pipe ends its wait for work, and its CPU limit ends any decode.

`InlineDecoder` decodes in the calling thread instead (the CLI, and the tests that need no processes).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import resource
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np

from indexer.images import ImageRejected, decode_image
from indexer.lifeline import ctrl_c_held_back, ignore_ctrl_c
from search_api.busy import ServerBusy

log = logging.getLogger(__name__)

# Below the model, as the indexer's decode workers: decoding takes the cycles the model leaves idle.
NICENESS = 5
INLINE_DECODES = 2  # uploads decoded at once in request threads when api.decode_processes is 0
REQUEST = struct.Struct(">II")  # length of the JSON options, length of the image bytes
ANSWER = struct.Struct(">BI")  # 0 pixels / 1 rejected, payload length
PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)
CHILD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
             "MALLOC_ARENA_MAX": "2", "TF_CPP_MIN_LOG_LEVEL": "3"}


@dataclass(frozen=True)
class DecodeRequest:
    size: int
    max_pixels: int
    limit_setting: str
    min_side: int = 0  # a JPEG is decoded at the smallest scale covering this (0: size), as the indexer does
    crop_fraction: float = 1.0  # model.crop_fraction, resolved: the same crop as indexing


class UploadDecoder(Protocol):
    def decode(self, data: bytes, request: DecodeRequest) -> np.ndarray: ...  # raises ImageRejected, ServerBusy
    def start(self) -> None: ...
    def close(self) -> None: ...


class InlineDecoder:
    """Decodes in the calling thread, at most `concurrency` at a time."""

    def __init__(self, wait_seconds: float, concurrency: int = INLINE_DECODES) -> None:
        self._slots = threading.BoundedSemaphore(concurrency)
        self.wait_seconds = wait_seconds

    def decode(self, data: bytes, request: DecodeRequest) -> np.ndarray:
        if not self._slots.acquire(timeout=self.wait_seconds):
            raise ServerBusy(f"no decoder was free within {self.wait_seconds:g} s")
        try:
            return decode_image(data, request.size, request.max_pixels, request.limit_setting,
                                request.min_side, request.crop_fraction).pixels
        finally:
            self._slots.release()

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass


class _Child:
    """One decode process and its pipes."""

    def __init__(self, cpu_seconds: float, memory_mb: int) -> None:
        # The same import path as this process, wherever it was started from.
        path = os.pathsep.join([PACKAGE_ROOT, *filter(None, [os.environ.get("PYTHONPATH")])])
        with ctrl_c_held_back():
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "search_api.upload_decoder", str(os.getpid()), str(cpu_seconds), str(memory_mb)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={**os.environ, **CHILD_ENV, "PYTHONPATH": path},
                bufsize=0)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def end(self) -> None:
        """Close its pipes (it leaves when it sees them closed) and make sure it is gone."""
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()
        try:
            self.proc.wait(1)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class DecodePool:
    """`processes` decode processes shared by the request threads of one server worker."""

    def __init__(self, processes: int, cpu_seconds: float, memory_mb: int, wait_seconds: float) -> None:
        self.cpu_seconds, self.memory_mb, self.wait_seconds = cpu_seconds, memory_mb, wait_seconds
        # The CPU limit ends a costly decode; this only ends a child that stopped making progress, with
        # slack for one that waits for the cores at its low priority on a busy machine.
        self.wall_seconds = 10 * cpu_seconds + 30
        self._idle: queue.Queue[_Child | None] = queue.Queue()
        for _ in range(processes):
            self._idle.put(None)  # started on first use, or by start()
        self._size = processes
        self._closed = False

    def start(self) -> None:
        """Start every process now (they import Pillow while the model warms up)."""
        slots = [self._idle.get() for _ in range(self._size)]
        for i, child in enumerate(slots):
            if child is None or not child.alive:
                slots[i] = _Child(self.cpu_seconds, self.memory_mb)
        for child in slots:
            self._idle.put(child)
        atexit.register(self.close)

    def close(self) -> None:
        self._closed = True
        while True:
            try:
                child = self._idle.get_nowait()
            except queue.Empty:
                return
            if child is not None:
                child.end()

    def decode(self, data: bytes, request: DecodeRequest) -> np.ndarray:
        try:
            child = self._idle.get(timeout=self.wait_seconds)
        except queue.Empty:
            raise ServerBusy(f"no decoder was free within {self.wait_seconds:g} s") from None
        try:
            if child is None or not child.alive:
                if child is not None:
                    child.end()
                child = _Child(self.cpu_seconds, self.memory_mb)
            result, child = self._run(child, data, request)
        finally:
            if self._closed and child is not None:
                child.end()
                child = None
            self._idle.put(child)
        if isinstance(result, ImageRejected):
            try:
                raise result
            finally:  # the raised error's traceback holds this frame: no cycle that keeps `data` alive
                del result, data
        return result

    def _run(self, child: _Child, data: bytes,
             request: DecodeRequest) -> tuple[np.ndarray | ImageRejected, _Child | None]:
        """The pixels or why the upload was refused, and the child to keep (None: it is gone)."""
        options = json.dumps({"size": request.size, "max_pixels": request.max_pixels,
                              "setting": request.limit_setting, "min_side": request.min_side,
                              "crop": request.crop_fraction}).encode()
        deadline = time.monotonic() + self.wall_seconds
        stdin, stdout = child.proc.stdin, child.proc.stdout
        assert stdin is not None and stdout is not None
        try:
            stdin.write(REQUEST.pack(len(options), len(data)) + options)
            stdin.write(data)
            status, length = ANSWER.unpack(_read_exactly(stdout, ANSWER.size, deadline))
            payload = _read_exactly(stdout, length, deadline)
        except (OSError, EOFError, TimeoutError) as exc:
            return self._failed(child, exc), None
        if status == 1:
            rejected = json.loads(payload)
            return ImageRejected(rejected["message"], rejected["kind"]), child
        return np.frombuffer(payload, np.uint8).reshape(request.size, request.size, 3), child

    def _failed(self, child: _Child, exc: Exception) -> ImageRejected:
        """The child died or overran its deadline while decoding: end it and say why the upload was refused."""
        if isinstance(exc, TimeoutError):
            child.proc.kill()
        child.end()
        code = child.proc.returncode
        if isinstance(exc, TimeoutError):
            why = f"decoding took longer than {self.wall_seconds:g} s"
        elif code == -signal.SIGPROF:
            why = f"decoding needed more than {self.cpu_seconds:g} s of CPU time (api.decode_cpu_seconds)"
        else:
            why = f"the decoder stopped (exit status {code}; more than api.decode_memory_mb?)"
        log.warning("upload rejected: %s", why)
        return ImageRejected(f"{why}: far more decoding work than an image needs", "too_costly")


def _read_exactly(pipe: IO[bytes], count: int, deadline: float) -> bytes:
    chunks, left = [], count
    fd = pipe.fileno()
    while left:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            raise TimeoutError
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


# --- the child process ------------------------------------------------------------------------


def _limit_address_space(extra_mb: int) -> None:
    with open("/proc/self/statm") as statm:
        in_use = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    limit = in_use + extra_mb * 2**20
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))


def _serve(parent: int, cpu_seconds: float, memory_mb: int, source: IO[bytes], sink: IO[bytes]) -> None:
    os.nice(NICENESS)
    ignore_ctrl_c()  # Ctrl-C in a terminal is for the server, which ends us
    _limit_address_space(memory_mb)
    while os.getppid() == parent:
        head = source.read(REQUEST.size)
        if len(head) < REQUEST.size:
            return  # the worker closed the pipe, or died
        options_length, data_length = REQUEST.unpack(head)
        options = json.loads(source.read(options_length))
        data = source.read(data_length)
        signal.setitimer(signal.ITIMER_PROF, cpu_seconds)  # the kernel ends this process when it is spent
        try:
            pixels = decode_image(data, options["size"], options["max_pixels"], options["setting"],
                                  options["min_side"], options["crop"]).pixels
            status, payload = 0, np.ascontiguousarray(pixels, np.uint8).tobytes()
        except ImageRejected as exc:
            status, payload = 1, json.dumps({"kind": exc.kind, "message": str(exc)}).encode()
        except MemoryError:
            message = "image too large to decode in memory (api.decode_memory_mb)"
            status, payload = 1, json.dumps({"kind": "too_many_pixels", "message": message}).encode()
        finally:
            signal.setitimer(signal.ITIMER_PROF, 0)
        del data
        sink.write(ANSWER.pack(status, len(payload)) + payload)
        sink.flush()


def main(argv: list[str]) -> None:
    parent, cpu_seconds, memory_mb = int(argv[0]), float(argv[1]), int(argv[2])
    try:
        _serve(parent, cpu_seconds, memory_mb, sys.stdin.buffer, sys.stdout.buffer)
    except (BrokenPipeError, KeyboardInterrupt):
        pass


def upload_decoder(api: Any) -> UploadDecoder:
    """The decoder the server uses for uploads, from the api settings."""
    if api.decode_processes:
        return DecodePool(api.decode_processes, api.decode_cpu_seconds, api.decode_memory_mb, api.queue_timeout)
    return InlineDecoder(wait_seconds=api.queue_timeout)


if __name__ == "__main__":
    main(sys.argv[1:])
