"""The ``appetence`` command line: worker, up, simulate, topics, schemas, bench."""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from processors.cooccurrence import CooccurrenceConfig
from stream.config import ConfigError, Settings, load_settings

cli = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
topics_cli = typer.Typer(no_args_is_help=True, help="Kafka topics.")
schemas_cli = typer.Typer(no_args_is_help=True, help="Event JSON Schemas.")
cli.add_typer(topics_cli, name="topics")
cli.add_typer(schemas_cli, name="schemas")
compiled_cli = typer.Typer(no_args_is_help=True, help="The slice's modules compiled to C.")
cli.add_typer(compiled_cli, name="compiled")


#: Settings given as global CLI flags; they take precedence over APPETENCE_* variables.
_flag_overrides: dict[str, Any] = {}


@cli.callback()
def global_options(
    kafka_bootstrap: Annotated[
        str | None, typer.Option(help="Kafka host:port list [APPETENCE_KAFKA_BOOTSTRAP]")
    ] = None,
    redis_url: Annotated[str | None, typer.Option(help="Redis URL [APPETENCE_REDIS_URL]")] = None,
    partitions: Annotated[
        int | None, typer.Option(help="Input partitions [APPETENCE_PARTITIONS]")
    ] = None,
    app_id: Annotated[
        str | None, typer.Option(help="Consumer group / app id [APPETENCE_APP_ID]")
    ] = None,
) -> None:
    """appetence: real-time recommendations from clickstreams, Kafka → Faust → Redis."""
    _flag_overrides.update(
        kafka_bootstrap=kafka_bootstrap, redis_url=redis_url, partitions=partitions, app_id=app_id
    )


def _settings(**overrides: Any) -> Settings:
    try:
        return load_settings(**{**_flag_overrides, **overrides})
    except ConfigError as error:
        typer.echo(f"appetence: {error}", err=True)
        raise typer.Exit(2) from None


def _tune_gc(settings: Settings) -> None:
    """The worker holds millions of long-lived objects (the models, the encoded states) and
    allocates a batch's worth of short-lived ones: fewer, larger young collections cut the
    collector's share of the slice from ~6% to under 1% and its longest pause from ~0.2 s to
    ~0.05 s; at 200,000 instead of 50,000, most of a batch's objects are gone before one
    comes (docs/benchmarks.md)."""
    if settings.gc_young_threshold:
        gc.set_threshold(settings.gc_young_threshold, 20, 100)


@cli.command()
def worker() -> None:
    """Run one stream worker (a Faust consumer-group member). Start more to scale out."""
    import faust

    from processors.pipeline import compile_kernels
    from stream.app import create_app
    from stream.metrics import GcPauseTimer

    settings = _settings()
    _tune_gc(settings)
    started = time.monotonic()
    compiled = compile_kernels()  # from numba's cache: not in the middle of the first batch
    typer.echo(
        f"appetence: slice kernels ready in {time.monotonic() - started:.1f} s"
        + (f" ({compiled} compiled: not in numba's cache)" if compiled else ""),
        err=True,
    )
    built = create_app(settings)
    GcPauseTimer(built.metrics.gc_pause_seconds).install()  # for the process's lifetime
    faust.Worker(
        built.app, loglevel=settings.log_level, redirect_stdouts=False
    ).execute_from_commandline()


@cli.command()
def collector() -> None:
    """Run the HTTP collector: POST /v1/events from browsers and servers, GET /tracker.js."""
    import asyncio

    from stream.collector import serve

    settings = _settings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(settings))


@cli.command()
def forget(
    user_ids: Annotated[list[str] | None, typer.Argument(help="User ids to forget")] = None,
    file: Annotated[
        Path | None, typer.Option(help="A file of user ids, one per line (- for stdin)")
    ] = None,
) -> None:
    """Forget users (GDPR erasure): every worker deletes their state, Redis keys, audience
    memberships and visitor memory; their older in-flight events are dropped."""
    from processors.forget import encode_forget_request, valid_user_id
    from stream.topics import make_producer

    ids = list(user_ids or [])
    if file is not None:
        handle = sys.stdin if str(file) == "-" else file.open()
        ids += [line.strip() for line in handle if line.strip()]
    invalid = [user for user in ids if not valid_user_id(user)]
    if invalid or not ids:
        typer.echo(f"appetence: invalid or no user ids: {invalid[:5]}", err=True)
        raise typer.Exit(2)
    settings = _settings()
    producer = make_producer(settings)
    now_ms = int(time.time() * 1000)
    for user in ids:
        producer.send(
            settings.forget_topic, key=user.encode(), value=encode_forget_request(user, now_ms)
        )
    producer.flush(timeout=30)
    producer.close()
    typer.echo(json.dumps({"forget_requests": len(ids), "topic": settings.forget_topic}))


@topics_cli.command("create")
def topics_create() -> None:
    """Create the input and dead-letter topics if missing (idempotent)."""
    from stream.topics import ensure_topics

    created = ensure_topics(_settings())
    typer.echo(json.dumps({"created": created}))


@compiled_cli.command("build")
def compiled_build() -> None:
    """Compile the modules changed since the last build (make runs this; stream/compiled.py)."""
    from stream.compiled import main

    raise typer.Exit(main(["build"]))


@compiled_cli.command("status")
def compiled_status() -> None:
    """Which modules are built, fresh (built from the current source) and loaded here."""
    from stream.compiled import main

    raise typer.Exit(main(["status"]))


@schemas_cli.command("export")
def schemas_export(
    directory: Annotated[Path, typer.Argument(help="Output folder")] = Path("schemas"),
) -> None:
    """Write one JSON Schema per event type (generated from the code's own types)."""
    from processors.events import event_json_schemas

    directory.mkdir(parents=True, exist_ok=True)
    for name, schema in event_json_schemas().items():
        path = directory / f"{name}.schema.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        typer.echo(str(path))


@cli.command()
def simulate(
    events: Annotated[int | None, typer.Option(help="Stop after N events")] = None,
    rate: Annotated[float, typer.Option(help="Target events per second")] = 2000.0,
    duration: Annotated[float | None, typer.Option(help="Stop after S seconds")] = None,
    seed: int = 42,
    users_per_minute: Annotated[float, typer.Option(help="New users per simulated minute")] = 120.0,
    batch_size: Annotated[int, typer.Option(help="Events per batch envelope")] = 100,
    single: Annotated[bool, typer.Option(help="One record per event, keyed by user_id")] = False,
    malformed_rate: Annotated[float, typer.Option(help="Share of extra malformed records")] = 0.0,
    backfill: Annotated[
        float, typer.Option(help="Event time starts this many seconds ago")
    ] = 3600.0,
    truth_out: Annotated[Path | None, typer.Option(help="Write the ground truth JSON here")] = None,
    events_out: Annotated[Path | None, typer.Option(help="Also write events as JSONL here")] = None,
) -> None:
    """Produce realistic, seeded traffic to Kafka (kafka-python)."""
    from processors.simulator import SimulationConfig
    from stream.simulate import run_simulation
    from stream.topics import ensure_topics

    settings = _settings()
    ensure_topics(settings)
    report = run_simulation(
        settings,
        SimulationConfig(seed=seed, users_per_minute=users_per_minute),
        events=events,
        rate=rate,
        duration=duration,
        batch_size=batch_size,
        malformed_rate=malformed_rate,
        single=single,
        backfill_seconds=backfill,
        truth_out=truth_out,
        events_out=events_out,
    )
    typer.echo(json.dumps(report.as_dict()))


@cli.command()
def produce(
    file: Annotated[typer.FileBinaryRead, typer.Argument(help="JSONL file, - for stdin")] = "-",  # type: ignore[assignment]
) -> None:
    """Send raw records, one per line (an event or a JSON array), keyed by their user_id.

    A kcat-like producer for the embedded broker (Debian's kcat cannot talk to Tansu):
    lines are sent as-is, so malformed lines reach the dead-letter topic too.
    """
    import msgspec

    from stream.topics import make_producer

    settings = _settings()
    producer = make_producer(settings)
    sent = 0
    for line in file:
        record = line.rstrip(b"\r\n")
        if not record:
            continue
        key = None
        try:
            value = msgspec.json.decode(record)
            first = value[0] if isinstance(value, list) and value else value
            if isinstance(first, dict) and isinstance(first.get("user_id"), str):
                key = first["user_id"].encode()
        except (msgspec.DecodeError, UnicodeDecodeError):
            pass
        producer.send(settings.events_topic, value=record, key=key)
        sent += 1
    producer.flush()
    producer.close()
    typer.echo(json.dumps({"sent": sent, "topic": settings.events_topic}))


catalog_cli = typer.Typer(no_args_is_help=True, help="Recipes, products and banners.")
cli.add_typer(catalog_cli, name="catalog")


@catalog_cli.command("load")
def catalog_load_command(
    file: Annotated[Path, typer.Argument(help="JSONL: one item or banner record per line")],
    strict: Annotated[bool, typer.Option(help="Exit 1 if any line was rejected")] = False,
) -> None:
    """Validate and publish catalog records; invalid lines go to the catalog dead-letter topic."""
    from stream.catalog_load import load_catalog_lines
    from stream.topics import ensure_topics, make_producer

    settings = _settings()
    if not file.is_file():
        raise typer.BadParameter(f"{file} is not a file")
    ensure_topics(settings)
    producer = make_producer(settings)
    try:
        with file.open("rb") as lines:
            report = load_catalog_lines(lines, producer, settings, source=f"file:{file}")
    finally:
        producer.close()
    summary = {**report.as_dict(), "topic": settings.catalog_topic}
    if report.rejected:
        summary["dead_letter_topic"] = settings.catalog_dead_letter_topic
    typer.echo(json.dumps(summary))
    if strict and report.rejected:
        raise typer.Exit(1)


@catalog_cli.command("delete")
def catalog_delete_command(
    keys: Annotated[list[str], typer.Argument(help="kind:id, e.g. banner:b1 or item:r42")],
) -> None:
    """Remove catalog entries (tombstones on the compacted topic)."""
    from stream.catalog_load import delete_catalog_entries
    from stream.topics import make_producer

    settings = _settings()
    bad = [key for key in keys if key.partition(":")[0] not in ("item", "banner")]
    if bad:
        raise typer.BadParameter(f"expected item:ID or banner:ID, got {bad}")
    producer = make_producer(settings)
    try:
        sent = delete_catalog_entries(keys, producer, settings)
    finally:
        producer.close()
    typer.echo(json.dumps({"deleted": sent, "topic": settings.catalog_topic}))


@cli.command()
def up(
    demo: Annotated[bool, typer.Option(help="Also run the traffic simulator")] = False,
    duration: Annotated[float | None, typer.Option(help="Stop everything after S seconds")] = None,
    rate: Annotated[float, typer.Option(help="Simulator events per second")] = 400.0,
    malformed_rate: Annotated[float, typer.Option(help="Simulator malformed share")] = 0.005,
    broker_port: Annotated[int | None, typer.Option(help="Broker port (default: free)")] = None,
    redis_port: Annotated[int | None, typer.Option(help="Redis port (default: free)")] = None,
    web_port: Annotated[
        int | None, typer.Option(help="Worker /metrics port (default: free)")
    ] = None,
    log_dir: Annotated[Path | None, typer.Option(help="Where child logs go")] = None,
    live: Annotated[bool, typer.Option(help="Show the live view")] = True,
) -> None:
    """Start broker + Redis + worker (+ simulator) on 127.0.0.1, with a live view."""
    from stream.embedded import EmbeddedStackError
    from stream.supervisor import run_stack

    _settings()  # fail fast on bad env before starting anything
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="appetence-up-"))
    try:
        summary = run_stack(
            demo=demo,
            duration=duration,
            rate=rate,
            malformed_rate=malformed_rate,
            broker_port=broker_port,
            redis_port=redis_port,
            web_port=web_port,
            log_dir=log_dir,
            live=live and sys.stdout.isatty(),
        )
    except EmbeddedStackError as error:
        typer.echo(f"appetence: {error} (logs in {log_dir})", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(summary, indent=2))


#: The evaluator's flags default to the model's (validated) defaults, which the worker runs.
_MODEL_DEFAULTS = CooccurrenceConfig()

evaluate_cli = typer.Typer(no_args_is_help=True, help="Offline evaluation on real data.")
cli.add_typer(evaluate_cli, name="evaluate")


@evaluate_cli.command("next-click")
def evaluate_next_click_command(
    train: Annotated[Path, typer.Option(help="Training sessions file")],
    test: Annotated[Path | None, typer.Option(help="Test sessions (diginetica: split)")] = None,
    mode: Annotated[str, typer.Option(help="static or streaming")] = "streaming",
    k: int = 20,
    fmt: Annotated[
        str, typer.Option("--format", help="session-rec | diginetica | csv")
    ] = "session-rec",
    similarity: Annotated[str, typer.Option(help="rules|count|jaccard|cosine|lift|llr")] = "rules",
    steps: int = _MODEL_DEFAULTS.steps,
    recent_items: int = _MODEL_DEFAULTS.recent_items,
    recency_decay: float = _MODEL_DEFAULTS.recency_decay,
    symmetric_weight: float = _MODEL_DEFAULTS.symmetric_weight,
    max_neighbours: int = _MODEL_DEFAULTS.max_neighbours,
    session_knn_weight: Annotated[
        float, typer.Option(help="Weight of session-kNN candidates (0: off)")
    ] = _MODEL_DEFAULTS.session_knn_weight,
    neighbour_cap: Annotated[
        float, typer.Option(help="Visitors an item's neighbour votes count at most")
    ] = _MODEL_DEFAULTS.neighbour_cap,
    votes_per_item: Annotated[
        int, typer.Option(help="Strongest rule votes each session item casts")
    ] = _MODEL_DEFAULTS.votes_per_item,
    vote_refresh: Annotated[
        float,
        typer.Option(help="Rebuild an item's vote lists after its clicks grew by this share"),
    ] = _MODEL_DEFAULTS.vote_refresh,
    half_life_hours: Annotated[
        float, typer.Option(help="Half-life of co-occurrence evidence in hours (0: no decay)")
    ] = (_MODEL_DEFAULTS.half_life_ms or 0.0) / 3_600_000,
    revisit_slots: Annotated[
        int, typer.Option(help="Places kept for the session's own items (0: none)")
    ] = _MODEL_DEFAULTS.revisit_slots,
    bridge_weight: Annotated[
        float, typer.Option(help="Weight of the second hop's votes (0: off)")
    ] = _MODEL_DEFAULTS.bridge_weight,
    bridge_items: Annotated[
        int, typer.Option(help="Strongest candidates whose votes make the second hop")
    ] = _MODEL_DEFAULTS.bridge_items,
    bridge_keep: Annotated[
        int, typer.Option(help="First-hop candidates kept on top when the second hop is on")
    ] = _MODEL_DEFAULTS.bridge_keep,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only")] = False,
) -> None:
    """Next-click HR@K / MRR@K with the co-occurrence model (the protocol of shared/data)."""
    from dataclasses import asdict

    from rich.progress import Progress

    from processors.cooccurrence import CooccurrenceConfig, CooccurrenceModel
    from processors.evaluation import evaluate_next_click
    from stream.datasets import read_diginetica_split, read_sessions

    if mode not in ("static", "streaming"):
        raise typer.BadParameter("--mode must be static or streaming")
    if fmt == "diginetica":
        train_sessions, test_sessions = read_diginetica_split(train)
    else:
        if test is None:
            raise typer.BadParameter("--test is required for this format")
        train_sessions = read_sessions(train, fmt)  # type: ignore[arg-type]
        test_sessions = read_sessions(test, fmt)  # type: ignore[arg-type]
    config = CooccurrenceConfig(
        steps=steps,
        max_neighbours=max_neighbours,
        similarity=similarity,  # type: ignore[arg-type]
        recent_items=recent_items,
        recency_decay=recency_decay,
        symmetric_weight=symmetric_weight,
        session_knn_weight=session_knn_weight,
        neighbour_cap=neighbour_cap,
        votes_per_item=votes_per_item,
        vote_refresh=vote_refresh,
        half_life_ms=half_life_hours * 3_600_000 if half_life_hours > 0 else None,
        revisit_slots=revisit_slots,
        bridge_weight=bridge_weight,
        bridge_items=bridge_items,
        bridge_keep=bridge_keep,
    )
    show = sys.stderr.isatty() and not as_json
    with Progress(disable=not show, transient=True) as bar:
        task = bar.add_task("evaluating", total=len(test_sessions))
        result = evaluate_next_click(
            CooccurrenceModel(config),
            train_sessions,
            test_sessions,
            k=k,
            streaming=mode == "streaming",
            progress=lambda done: bar.update(task, completed=done),
        )
    report = {"train": str(train), "test": str(test), "format": fmt, **result.as_dict()}
    # Every field of the model's configuration, flags and defaults alike: the run is
    # reproducible from its report.
    report["config"] = asdict(config)
    typer.echo(json.dumps(report) if as_json else json.dumps(report, indent=2))


@evaluate_cli.command("banners")
def evaluate_banners_command(
    seed: int = 42,
    hours: Annotated[float, typer.Option(help="Simulated hours")] = 24.0,
    users_per_minute: Annotated[float, typer.Option(help="New visitors per minute")] = 10.0,
    slots: Annotated[int, typer.Option(help="Banners per placement")] = 2,
    dead_banner_at_hours: Annotated[
        float, typer.Option(help="The best banner's true CTR drops to 0 here (<0: never)")
    ] = 12.0,
    recipe_neighbours: Annotated[
        bool,
        typer.Option(
            help="Neighbour votes in the recipe slates (3x slower; banners only "
            "read the slates through the overlap term)"
        ),
    ] = False,
    log_out: Annotated[
        Path | None, typer.Option(help="Write the live policy's impressions as JSONL here")
    ] = None,
    png: Annotated[Path | None, typer.Option(help="Chart of the live policy's log")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only")] = False,
) -> None:
    """Closed-loop banner CTR in simulation: live policy vs random and global-popular."""
    import dataclasses

    from rich.console import Console
    from rich.table import Table

    from processors.banner_eval import BannerEvalConfig, evaluate_banners
    from processors.banner_report import ctr_report

    settings = _settings()
    slice_config = settings.slice_config()
    if not recipe_neighbours:
        slice_config = dataclasses.replace(
            slice_config,
            cooccurrence=dataclasses.replace(slice_config.cooccurrence, session_knn_weight=0.0),
        )
    config = BannerEvalConfig(
        seed=seed,
        hours=hours,
        users_per_minute=users_per_minute,
        slots=slots,
        dead_banner_at_hours=dead_banner_at_hours if dead_banner_at_hours >= 0 else None,
    )
    started = time.perf_counter()
    console = Console(stderr=True, quiet=as_json or not sys.stderr.isatty())
    results = evaluate_banners(
        config, slice_config, progress=lambda policy: console.log(f"running policy {policy}")
    )
    bucket_ms = config.bucket_minutes * 60_000
    summaries = {name: result.summary(bucket_ms) for name, result in results.items()}
    live = summaries["live"]

    def lift(other: str) -> float | None:
        base = summaries[other]["ctr"]
        return round(live["ctr"] / base, 3) if base else None  # type: ignore[operator]

    report: dict[str, object] = {
        "config": dataclasses.asdict(config),
        "policies": summaries,
        "lift_vs_random": lift("random"),
        "lift_vs_popular": lift("popular"),
        "dead_banner_share_by_10_min": [
            (minute, round(share, 4))
            for minute, share in results["live"].dead_banner_share(bucket_ms)
            if -60 <= minute <= 120
        ],
        "seconds": round(time.perf_counter() - started, 1),
    }
    log = results["live"].log
    if log_out:
        with log_out.open("wb") as out:
            for row in log:
                out.write(json.dumps(dataclasses.asdict(row)).encode() + b"\n")
    if png:
        from stream.banner_report import write_png

        rows = ((r.ts, r.banner_id, r.position, r.clicked) for r in log)
        write_png(ctr_report(rows), png, f"live banner policy, seed {seed}, {hours:g} h")
    if as_json:
        typer.echo(json.dumps(report))
        return
    table = Table(title=f"banners, closed loop: seed {seed}, {hours:g} simulated hours")
    for column in ("policy", "impressions", "clicks", "CTR", "expected CTR", "regret/impr",
                   "cap violations"):  # fmt: skip
        table.add_column(column, justify="right")
    for name, summary in summaries.items():
        table.add_row(name, *(str(summary[k]) for k in ("impressions", "clicks", "ctr",
                      "expected_ctr", "regret_per_impression", "cap_violations")))  # fmt: skip
    Console().print(table)
    typer.echo(json.dumps({k: v for k, v in report.items() if k != "policies"}, indent=2))


report_cli = typer.Typer(no_args_is_help=True, help="Reports on logged data.")
cli.add_typer(report_cli, name="report")


@report_cli.command("banners")
def report_banners_command(
    log: Annotated[Path, typer.Argument(help="JSONL: ts, banner_id, position, clicked")],
    png: Annotated[Path | None, typer.Option(help="Write the chart here")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only")] = False,
) -> None:
    """CTR per banner, per position and per day (with 95% intervals) of logged impressions."""
    import dataclasses

    import msgspec
    from rich.console import Console
    from rich.table import Table

    from processors.banner_report import ctr_report

    rows = []
    skipped = 0
    with log.open("rb") as lines:
        for line in lines:
            try:
                row = msgspec.json.decode(line)
                rows.append(
                    (int(row["ts"]), str(row["banner_id"]), int(row.get("position") or 0),
                     bool(row["clicked"]))
                )  # fmt: skip
            except (msgspec.DecodeError, KeyError, TypeError, ValueError):
                skipped += 1
    report = ctr_report(rows)
    if png:
        from stream.banner_report import write_png

        write_png(report, png, f"banner CTR, {log.name}")
    if as_json:
        payload = {k: [dataclasses.asdict(r) for r in v] for k, v in report.items()}
        typer.echo(json.dumps({**payload, "rows": len(rows), "skipped_lines": skipped}))
        return
    console = Console()
    for name, table_rows in report.items():
        table = Table(title=f"CTR per {name}")
        for column in (name, "impressions", "clicks", "CTR", "95% interval"):
            table.add_column(column, justify="right")
        for r in table_rows:
            table.add_row(r.key, str(r.impressions), str(r.clicks), f"{r.ctr:.4f}",
                          f"{r.ci_low:.4f}-{r.ci_high:.4f}")  # fmt: skip
        console.print(table)
    if skipped:
        typer.echo(f"skipped {skipped} unreadable lines", err=True)


def _register_loyalty_commands() -> None:
    from stream.audience_cli import evaluate_audience, load_audience, report_audience
    from stream.loyalty_cli import evaluate_loyalty, report_retention

    evaluate_cli.command("loyalty")(evaluate_loyalty)
    report_cli.command("retention")(report_retention)
    evaluate_cli.command("audience")(evaluate_audience)
    report_cli.command("audience")(report_audience)
    audience_cli = typer.Typer(no_args_is_help=True, help="Seed audiences.")
    audience_cli.command("load")(load_audience)
    cli.add_typer(audience_cli, name="audience")


_register_loyalty_commands()


@evaluate_cli.command("user-topk")
def evaluate_user_topk_command(
    train: Annotated[Path, typer.Option(help="CSV user_id,item_id,timestamp[,rating]")],
    test: Annotated[Path, typer.Option(help="Held-out interactions, same format")],
    k: int = 10,
    recommendations_out: Annotated[
        Path | None, typer.Option(help="Write user_id,item_id,rank CSV here")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only")] = False,
) -> None:
    """Precision/Recall/NDCG/MAP@K of K unseen items per test user (per-user holdout)."""
    import csv

    from processors.cooccurrence import CooccurrenceConfig, CooccurrenceModel
    from processors.evaluation import evaluate_user_topk
    from stream.datasets import read_user_interactions

    result = evaluate_user_topk(
        CooccurrenceModel(CooccurrenceConfig()),
        read_user_interactions(train),
        read_user_interactions(test),
        k=k,
    )
    if recommendations_out:
        with recommendations_out.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["user_id", "item_id", "rank"])
            for user_id, items in result.recommendations.items():
                for rank, item_id in enumerate(items, start=1):
                    writer.writerow([user_id, item_id, rank])
    report = {"train": str(train), "test": str(test), **result.as_dict()}
    typer.echo(json.dumps(report) if as_json else json.dumps(report, indent=2))


@cli.command("replay")
def replay_command(
    file: Annotated[Path, typer.Argument(help="Dataset file")],
    speed: Annotated[float, typer.Option(help="Time compression: 60 = a minute per second")] = 60.0,
    fmt: Annotated[
        str, typer.Option("--format", help="session-rec | diginetica | csv")
    ] = "session-rec",
    limit: Annotated[int | None, typer.Option(help="Only the first N clicks")] = None,
) -> None:
    """Push a public session dataset through Kafka into the live system."""
    from rich.progress import Progress

    from stream.replay import read_clicks, replay
    from stream.topics import ensure_topics

    if speed <= 0:
        raise typer.BadParameter("--speed must be positive")
    settings = _settings()
    ensure_topics(settings)
    clicks = read_clicks(file, fmt)  # type: ignore[arg-type]
    clicks = clicks[:limit] if limit else clicks
    with Progress(disable=not sys.stderr.isatty(), transient=True) as bar:
        task = bar.add_task("replaying", total=len(clicks))
        sent = replay(settings, clicks, speed, lambda n: bar.update(task, completed=n))
    typer.echo(json.dumps({"sent": sent, "topic": settings.events_topic, "speed": speed}))


@cli.command()
def bench(
    events: Annotated[
        int, typer.Option(help="Simulated events: processor stages and the preloaded pipeline")
    ] = 100_000,
    workers: Annotated[int, typer.Option(help="Worker processes draining the pipeline")] = 1,
    e2e: Annotated[
        bool, typer.Option(help="Also run the pipeline through broker and Redis")
    ] = True,
    e2e_events: Annotated[
        int | None, typer.Option(help="Events for the pipeline run (default: --events)")
    ] = None,
    sessions: Annotated[
        Path | None,
        typer.Option(help="Session-rec click log for the co-occurrence benchmarks"),
    ] = None,
    profile: Annotated[
        bool, typer.Option(help="Also profile the processors (cProfile): where the time goes")
    ] = False,
    live_rates: Annotated[
        str,
        typer.Option(
            help="Also offer these rates live after the drain (events/s, comma-separated, e.g. "
            "300,600,900): latency, batch size and busy share at each"
        ),
    ] = "",
    live_seconds: Annotated[
        float, typer.Option(help="Seconds of live traffic at each offered rate")
    ] = 20.0,
    live_record_events: Annotated[
        int,
        typer.Option(
            help="Offer the --live-rates in Kafka records of at most this many events (1: a "
            "record per event, as a site's keyed single-event producers send); 0: one envelope "
            "per partition per 20 ms, as the collector and the simulator send"
        ),
    ] = 0,
    item_scale_events: Annotated[
        int,
        typer.Option(
            help="Events fed over a 2,500- and a 10,000-item catalog to measure the item-level "
            "tables' memory per 10,000 items (0: skip)"
        ),
    ] = 200_000,
    paced_events: Annotated[
        int,
        typer.Option(
            help="After the rest, drain this many events of a stream paced like a real site's "
            "at the measured rate (each batch's events mostly other visitors'; the preloaded "
            "drain's simulated sessions are ~1,000x denser in time); 0: skip"
        ),
    ] = 50_000,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only")] = False,
) -> None:
    """Measure the hot path: decode, process, co-occurrence, and end to end (events/s)."""
    from stream.benchmark import run_benchmarks
    from stream.datasets import read_session_rec

    click_sessions = [list(s) for s in read_session_rec(sessions)] if sessions else None
    _tune_gc(_settings())  # the processors measured as the worker runs them
    if workers < 1:
        raise typer.BadParameter("--workers must be at least 1")
    try:
        rates = [float(rate) for rate in live_rates.split(",") if rate.strip()]
    except ValueError as error:
        raise typer.BadParameter(f"--live-rates: {error}") from error
    if paced_events < 0:
        raise typer.BadParameter("--paced-events must be 0 or more")
    if live_record_events < 0:
        raise typer.BadParameter("--live-record-events must be 0 or more")
    if any(rate <= 0 for rate in rates) or live_seconds <= 0:
        raise typer.BadParameter("--live-rates and --live-seconds must be positive")
    results = run_benchmarks(
        events=events,
        e2e=e2e,
        e2e_events=e2e_events or events,
        sessions=click_sessions,
        workers=workers,
        profile=profile,
        live_rates=rates,
        live_seconds=live_seconds,
        item_scale_events=item_scale_events,
        paced_events=paced_events,
        live_record_events=live_record_events,
    )
    if as_json:
        typer.echo(json.dumps(results))
    else:
        typer.echo(json.dumps(results, indent=2))


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM stops like Ctrl-C, so `finally` blocks stop child processes."""
    raise KeyboardInterrupt


def main() -> None:
    logging.basicConfig(
        level=os.environ.get("APPETENCE_LOG_LEVEL", "info").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("kafka").setLevel(logging.WARNING)  # kafka-python is chatty at INFO
    signal.signal(signal.SIGTERM, _terminate)
    started = time.monotonic()
    try:
        cli()
    finally:
        logging.getLogger(__name__).debug("exit after %.1fs", time.monotonic() - started)


if __name__ == "__main__":
    main()
