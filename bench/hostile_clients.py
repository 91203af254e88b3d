"""Hostile clients against `lookalike serve`: slow connections and decode bombs, on loopback only.

    python bench/hostile_clients.py /path/to/efficientnet_lite0_tf1 --image-size 224
    python bench/hostile_clients.py MODULE --image-size 224 --server-path /tmp/old-checkout

Builds a small library (20 photos and one 26 MB BMP) in --work-dir, indexes it, starts
`lookalike serve` with one worker and the default settings, and prints in one run:

- /healthz latency (p50, p99, max, time-outs) while idle, while 32 slow clients are connected
  (8 each: one byte sent, headers cut short, a body cut short, a 26 MB /file download that is never
  read), and while 4 decode bombs run (31 MB of PNG tEXt chunks, a 49-megapixel progressive JPEG
  whose scans repeat 50 times, 49-megapixel black PNGs);
- the time of a search while the slow clients are connected, and when the server closed them;
- the worker process's resident memory at start and at its peak (decode processes apart).

`--server-path` serves (and indexes with) the code in another checkout, to compare two versions.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from helpers import jpeg_scan_bomb, png_pixel_bomb, png_text_bomb  # noqa: E402
from serving import LOOPBACK, free_port, multipart, query_photos  # noqa: E402

PROBE_TIMEOUT = 10.0  # a /healthz that takes longer counts as this long, and as a time-out
PROBE_EVERY = 0.2
SLOW_KINDS = ("one_byte", "partial_headers", "partial_body", "unread_file")
BIG_FILE = "big.bmp"


def build_library(root: Path) -> None:
    if (root / BIG_FILE).exists():
        return
    root.mkdir(parents=True, exist_ok=True)
    for i, photo in enumerate(query_photos(20, seed=7)):
        (root / f"photo{i:02d}.jpg").write_bytes(photo)
    noise = np.random.default_rng(0).integers(0, 256, (3000, 3000, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / BIG_FILE)  # 27 MB uncompressed


def server_env(args: argparse.Namespace, data_dir: Path) -> dict[str, str]:
    env = {**os.environ, "LOOKALIKE_CONFIG": "", "LOOKALIKE_MODEL__HANDLE": str(args.module.resolve()),
           "LOOKALIKE_MODEL__IMAGE_SIZE": str(args.image_size), "LOOKALIKE_STORAGE__DATA_DIR": str(data_dir),
           "LOOKALIKE_LOGGING__LEVEL": "WARNING", "PYTHONPATH": str(args.server_path.resolve()),
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    if args.threads:
        env["LOOKALIKE_API__THREADS"] = str(args.threads)
    return env


def start_server(env: dict[str, str], port: int, cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "lookalike", "serve", "--host", LOOPBACK, "--port", str(port),
                                 "--workers", "1"], env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"lookalike serve exited with {proc.returncode}; see {log}")
        try:
            if get(port, "/readyz", 5)[0] == 200:
                return proc
        except OSError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("lookalike serve did not become ready within 300 s")


def get(port: int, path: str, timeout: float) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def post(port: int, path: str, body: bytes, content_type: str, timeout: float) -> int:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": content_type})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


class Prober:
    """Asks /healthz every PROBE_EVERY seconds from its own thread; a time-out counts as PROBE_TIMEOUT."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.times: list[float] = []
        self.timeouts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                ok = get(self.port, "/healthz", PROBE_TIMEOUT)[0] == 200
            except OSError:
                ok = False
            took = time.perf_counter() - started
            if not ok:
                self.timeouts += 1
                took = max(took, PROBE_TIMEOUT)
            self.times.append(took)
            self._stop.wait(PROBE_EVERY)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(PROBE_TIMEOUT + 5)

    def summary(self) -> str:
        ms = np.asarray(self.times) * 1000
        return (f"p50 {np.percentile(ms, 50):7.1f} ms  p99 {np.percentile(ms, 99):7.1f} ms  max {ms.max():7.1f} ms  "
                f"({len(ms)} probes, {self.timeouts} failed or over {PROBE_TIMEOUT:.0f} s)")


class MemoryWatch:
    """Peak resident memory of the worker process itself and of its child processes, sampled every 50 ms."""

    def __init__(self, arbiter: psutil.Process) -> None:
        self.arbiter = arbiter
        self.worker_peak = self.children_peak = 0.0
        self.worker_now = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        worker = children = 0
        for w in self.arbiter.children():
            try:
                worker += w.memory_info().rss
                children += sum(c.memory_info().rss for c in w.children(recursive=True))
            except psutil.NoSuchProcess:
                continue
        self.worker_now = worker / 2**20
        self.worker_peak = max(self.worker_peak, self.worker_now)
        self.children_peak = max(self.children_peak, children / 2**20)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.sample()

    def start(self) -> None:
        self.sample()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def slow_client(kind: str, port: int, file_id: int) -> socket.socket:
    sock = socket.socket()
    if kind == "unread_file":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(5)
    sock.connect((LOOPBACK, port))
    request = {
        "one_byte": b"G",
        "partial_headers": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ",
        "partial_body": (b"POST /api/v1/search HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                         b"Content-Length: 1000000\r\n\r\n" + b"\xff" * 100),
        "unread_file": f"GET /api/v1/images/{file_id}/file HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
    }[kind]
    sock.sendall(request)
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server has closed or reset the connection (whatever it sent is read and dropped)."""
    sock.setblocking(False)
    try:
        while True:
            if not sock.recv(1 << 20):
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def big_file_id(port: int) -> int:
    status, body = get(port, "/api/v1/images?limit=500", 30)
    assert status == 200, body
    return next(i["id"] for i in json.loads(body)["images"] if i["path"].endswith(BIG_FILE))


def slow_phase(port: int, photo: bytes, file_id: int, args: argparse.Namespace) -> None:
    each = args.slow_clients // len(SLOW_KINDS)
    sockets = [(kind, slow_client(kind, port, file_id)) for kind in SLOW_KINDS for _ in range(each)]
    opened = time.monotonic()
    body, content_type = multipart(photo)
    searches = []
    with Prober(port) as prober:
        end = opened + args.seconds
        while time.monotonic() < end:
            started = time.perf_counter()
            try:
                status = post(port, "/api/v1/search?k=5", body, content_type, PROBE_TIMEOUT)
            except OSError:
                status = 0
            searches.append((status, time.perf_counter() - started))
            time.sleep(1)
    print(f"  /healthz with {len(sockets)} slow clients: {prober.summary()}")
    took = [s for _, s in searches]
    print(f"  search with {len(sockets)} slow clients: {len(searches)} sent, statuses "
          f"{sorted({st for st, _ in searches})}, max {max(took) * 1000:.0f} ms")
    # A client that reads nothing cannot see the connection end before the data queued ahead of it:
    # those are drained only after the others, and judged by how much of the file they got.
    closed_at: dict[str, list[float]] = {kind: [] for kind in SLOW_KINDS}
    open_left = [(kind, sock) for kind, sock in sockets if kind != "unread_file"]
    deadline = opened + args.close_wait
    while open_left and time.monotonic() < deadline:
        for item in list(open_left):
            if closed_by_server(item[1]):
                closed_at[item[0]].append(time.monotonic() - opened)
                open_left.remove(item)
        time.sleep(0.25)
    for kind in SLOW_KINDS[:-1]:
        times = closed_at[kind]
        still = sum(1 for k, _ in open_left if k == kind)
        when = f"closed after {min(times):.1f}-{max(times):.1f} s" if times else "none closed"
        print(f"  {kind:16s} {when}; {still} of {each} still open after {args.close_wait:.0f} s")
    size = (args.work_dir / "library" / BIG_FILE).stat().st_size
    got = [drain(sock) for kind, sock in sockets if kind == "unread_file"]
    print(f"  {'unread_file':16s} read from {time.monotonic() - opened:.0f} s on: received {min(got) / 2**20:.1f}-"
          f"{max(got) / 2**20:.1f} MiB of the {size / 2**20:.1f} MiB file (less: the server cut the response)")
    for _, sock in sockets:
        sock.close()


def drain(sock: socket.socket) -> int:
    """Read a connection to its end (30 s at most); the bytes of the body that came (headers excluded)."""
    sock.setblocking(True)
    sock.settimeout(30)
    received = b""
    try:
        while chunk := sock.recv(1 << 20):
            received += chunk
    except OSError:
        pass
    return len(received.partition(b"\r\n\r\n")[2])


def bomb_phase(port: int, name: str, bombs: list[bytes], args: argparse.Namespace, memory: MemoryWatch) -> None:
    answers: list[tuple[int, float]] = []
    stop = threading.Event()

    def send(bomb: bytes) -> None:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                status = post(port, "/api/v1/search?k=5", bomb, "application/octet-stream", 120)
            except OSError:
                status = 0
            answers.append((status, time.perf_counter() - started))

    threads = [threading.Thread(target=send, args=(bomb,), daemon=True) for bomb in bombs]
    before = memory.worker_peak
    memory.worker_peak = memory.worker_now
    with Prober(port) as prober:
        for t in threads:
            t.start()
        time.sleep(args.seconds)
        stop.set()
        for t in threads:
            t.join(180)
    took = [s for _, s in answers]
    print(f"  /healthz while {len(bombs)} {name} bombs run: {prober.summary()}")
    print(f"  {len(answers)} bombs answered, statuses {sorted({st for st, _ in answers})}, "
          f"median {statistics.median(took):.2f} s, max {max(took):.2f} s each; "
          f"worker peak RSS {memory.worker_peak:.0f} MiB")
    memory.worker_peak = max(before, memory.worker_peak)


def phase(title: str, run: Callable[[], None]) -> None:
    print(title, flush=True)
    run()
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("module", type=Path, help="TF-Hub module directory to serve")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--work-dir", type=Path, default=REPO / "build" / "bench-hostile")
    parser.add_argument("--server-path", type=Path, default=REPO, help="checkout whose code serves (default: this)")
    parser.add_argument("--seconds", type=float, default=15, help="length of each phase")
    parser.add_argument("--close-wait", type=float, default=90,
                        help="how long to wait for the server to close the slow connections")
    parser.add_argument("--slow-clients", type=int, default=32, help="slow connections, a quarter of each kind")
    parser.add_argument("--threads", type=int, default=0, help="api.threads of the server (default: its default)")
    parser.add_argument("--phases", default="slow,cpu,memory", help="which phases to run (comma-separated)")
    args = parser.parse_args()
    library, data_dir = args.work_dir / "library", args.work_dir / f"data-{args.server_path.resolve().name}"
    build_library(library)
    env = server_env(args, data_dir)
    subprocess.run([sys.executable, "-m", "lookalike", "index", str(library)], env=env, cwd=args.work_dir,
                   check=True, capture_output=True)
    print("building the bombs...", flush=True)
    cpu_bombs = [png_text_bomb(31_000_000), jpeg_scan_bomb(7000, 50)] * 2
    pixel_bombs = [png_pixel_bomb(7000, 7000)] * 4
    port = free_port()
    server = start_server(env, port, args.work_dir, args.work_dir / "serve.log")
    try:
        arbiter = psutil.Process(server.pid)
        memory = MemoryWatch(arbiter)
        memory.start()
        print(f"serving {args.server_path.resolve()} on port {port}; worker RSS at start {memory.worker_now:.0f} MiB")
        photo = query_photos(1, seed=3)[0]
        file_id = big_file_id(port)

        def idle() -> None:
            with Prober(port) as prober:
                time.sleep(min(args.seconds, 5))
            print(f"  /healthz idle: {prober.summary()}")

        phases = args.phases.split(",")
        phase("idle", idle)
        if "slow" in phases:
            phase(f"{args.slow_clients} slow clients", lambda: slow_phase(port, photo, file_id, args))
        if "cpu" in phases:
            phase("4 CPU bombs (2 x 31 MB tEXt PNG, 2 x 16 MB progressive JPEG, scans x50)",
                  lambda: bomb_phase(port, "CPU", cpu_bombs, args, memory))
        if "memory" in phases:
            phase("4 memory bombs (49-megapixel black PNG, 143 kB)",
                  lambda: bomb_phase(port, "memory", pixel_bombs, args, memory))
        memory.stop()
        print(f"worker RSS peak {memory.worker_peak:.0f} MiB (now {memory.worker_now:.0f} MiB); "
              f"its child processes peak {memory.children_peak:.0f} MiB")
        print(f"server still answering: /healthz {get(port, '/healthz', PROBE_TIMEOUT)[0]}")
    finally:
        server.terminate()
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)


if __name__ == "__main__":
    main()
