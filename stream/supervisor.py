"""``appetence up``: run broker, Redis, worker and simulator as children, with a live view.

Every child is started with PR_SET_PDEATHSIG and stopped in reverse order on exit, Ctrl-C
or SIGTERM, so nothing is left running.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import redis
from rich.console import Console
from rich.live import Live

from stream.config import load_settings
from stream.embedded import ManagedProcess, embedded_stack, free_port, spawn
from stream.live import LiveState
from stream.topics import ensure_topics

#: With Tansu a group join completes after session_timeout / 2: 6 s (Kafka's minimum)
#: gives a 3 s join for the embedded demo. Production keeps the 10 s default.
EMBEDDED_SESSION_TIMEOUT_SECONDS = "6"


def worker_env(bootstrap: str, redis_url: str, web_port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("APPETENCE_KAFKA_SESSION_TIMEOUT_SECONDS", EMBEDDED_SESSION_TIMEOUT_SECONDS)
    # The embedded stack's workers share one fresh model-signing key (production sets its own).
    env.setdefault("APPETENCE_MODEL_SIGNING_KEY", secrets.token_hex(32))
    env.update(
        APPETENCE_KAFKA_BOOTSTRAP=bootstrap,
        APPETENCE_REDIS_URL=redis_url,
        APPETENCE_WEB_PORT=str(web_port),
        APPETENCE_WEB_HOST="127.0.0.1",
    )
    return env


def spawn_worker(env: dict[str, str], log_path: Path, name: str = "worker") -> ManagedProcess:
    return spawn(name, [sys.executable, "-m", "stream.cli", "worker"], log_path, env=env)


def run_stack(
    demo: bool,
    duration: float | None,
    rate: float,
    malformed_rate: float,
    broker_port: int | None,
    redis_port: int | None,
    web_port: int | None,
    log_dir: Path,
    live: bool,
) -> dict[str, Any]:
    console = Console(stderr=not live)
    children: list[ManagedProcess] = []
    state: LiveState | None = None
    with embedded_stack(log_dir, broker_port, redis_port) as stack:
        web_port = web_port or free_port()
        env = worker_env(stack.bootstrap, stack.redis_url, web_port)
        collector_port = free_port()
        collector_env = {
            **env,
            "APPETENCE_COLLECTOR_HOST": "127.0.0.1",
            "APPETENCE_COLLECTOR_PORT": str(collector_port),
        }
        # A local demo page on any origin may post to the local collector.
        collector_env.setdefault("APPETENCE_COLLECTOR_CORS_ORIGINS", '["*"]')
        settings = load_settings(kafka_bootstrap=stack.bootstrap, redis_url=stack.redis_url)
        header = (
            f"broker  {stack.bootstrap}   "
            f"(APPETENCE_KAFKA_BOOTSTRAP={stack.bootstrap} appetence produce < events.jsonl)\n"
            f"redis   {stack.redis_url}   (redis-cli -p {stack.redis_port})\n"
            f"metrics http://127.0.0.1:{web_port}/metrics   health http://127.0.0.1:{web_port}/health\n"
            f"collect POST http://127.0.0.1:{collector_port}/v1/events   "
            f"tracker http://127.0.0.1:{collector_port}/tracker.js\n"
            f"topic   {settings.events_topic}  dead letters {settings.dead_letter_topic}\n"
            f"key     {settings.redis_key_prefix}:user:<user_id>   logs {log_dir}"
        )
        console.print(header)
        ensure_topics(settings)
        try:
            children.append(spawn_worker(env, log_dir / "worker.log"))
            children.append(
                spawn(
                    "collector",
                    [sys.executable, "-m", "stream.cli", "collector"],
                    log_dir / "collector.log",
                    env=collector_env,
                )
            )
            if demo:
                children.append(
                    spawn(
                        "simulator",
                        [
                            sys.executable,
                            "-m",
                            "stream.cli",
                            "simulate",
                            "--rate",
                            str(rate),
                            "--malformed-rate",
                            str(malformed_rate),
                        ],
                        log_dir / "simulator.log",
                        env=env,
                    )
                )
            client = redis.Redis.from_url(stack.redis_url)
            state = LiveState(
                metrics_url=f"http://127.0.0.1:{web_port}/metrics",
                redis_client=client,
                key_prefix=settings.redis_key_prefix,
            )
            deadline = time.monotonic() + duration if duration else None
            live_view = Live(console=console, refresh_per_second=2) if live else None
            with live_view if live_view else contextlib.nullcontext():
                while deadline is None or time.monotonic() < deadline:
                    state.poll()
                    if live_view:
                        live_view.update(state.render(header))
                    for child in children:
                        if not child.alive():
                            raise RuntimeError(
                                f"{child.name} exited with {child.popen.returncode}; "
                                f"see {child.log_path}"
                            )
                    time.sleep(1.0)
        except KeyboardInterrupt:
            console.print("stopping...")
        finally:
            if state is not None:
                with contextlib.suppress(Exception):
                    state.poll()
            for child in reversed(children):
                try:
                    child.stop(timeout=15.0)
                except KeyboardInterrupt:  # interrupted again while waiting: do not wait
                    child.kill()
    summary: dict[str, Any] = dict(state.last) if state else {}
    summary.update(
        broker=stack.bootstrap,
        redis=stack.redis_url,
        collector=f"http://127.0.0.1:{collector_port}",
        log_dir=str(log_dir),
        children_exit_codes={c.name: c.popen.returncode for c in children},
    )
    return summary
