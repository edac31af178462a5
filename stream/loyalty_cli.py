"""``appetence evaluate loyalty`` and ``appetence report retention``."""

from __future__ import annotations

import csv
import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from processors.loyalty import (
    DAY_MS,
    TARGETS,
    LoyaltyConfig,
    LoyaltyModels,
    RateRow,
    ResolvedExample,
    decode_example,
    retention_rates,
    retention_report,
)
from stream.config import Settings


def parse_time_ms(text: str) -> int:
    """Epoch seconds or milliseconds, an ISO date (UTC midnight) or an ISO date-time.

    >>> parse_time_ms("2014-04-07"), parse_time_ms("1396828800"), parse_time_ms("1396828800000")
    (1396828800000, 1396828800000, 1396828800000)
    """
    text = text.strip()
    try:
        number = float(text)
    except ValueError:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.UTC)
        return int(parsed.timestamp() * 1000)
    return int(number if number > 1e11 else number * 1000)


def read_activity_log(path: Path) -> list[tuple[str, int, dict[str, str]]]:
    """CSV with header ``user_id,timestamp``; other columns are categorical features."""
    rows = []
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        fields = reader.fieldnames or []
        if "user_id" not in fields or "timestamp" not in fields:
            raise typer.BadParameter(f"{path}: the header needs user_id and timestamp")
        extra = [f for f in fields if f not in ("user_id", "timestamp")]
        for row in reader:
            rows.append(
                (row["user_id"], parse_time_ms(row["timestamp"]),
                 {name: row[name] for name in extra if row.get(name)})
            )  # fmt: skip
    return rows


def evaluate_loyalty(
    events: Annotated[
        Path | None, typer.Option(help="Activity log CSV: user_id,timestamp[,feature...]")
    ] = None,
    cutoff: Annotated[
        str | None, typer.Option(help="Learn up to here; score who returns after (date/epoch)")
    ] = None,
    horizon_days: Annotated[
        float | None,
        typer.Option(help="Return window after the cutoff, and the label horizon (default 7)"),
    ] = None,
    simulate: Annotated[bool, typer.Option(help="Against the simulator's true probabilities")] = (
        False
    ),
    days: Annotated[float, typer.Option(help="Simulated days")] = 14.0,
    seed: int = 42,
    users_per_minute: Annotated[float, typer.Option(help="Simulated new visitors")] = 2.0,
    model: Annotated[str, typer.Option(help="logistic | tree | forest")] = "logistic",
    learning_rate: Annotated[float, typer.Option(help="AdaGrad step size")] = 0.1,
    scores_out: Annotated[Path | None, typer.Option(help="Write user_id,score CSV here")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only")] = False,
) -> None:
    """Online return prediction: live vs true AUC in simulation, or on a real activity log
    (learn before the cutoff, then score every user seen and compare with who came back)."""
    from rich.progress import Progress

    from processors.loyalty_eval import evaluate_activity_log, simulate_loyalty
    from processors.simulator import SimulationConfig

    if model not in ("logistic", "tree", "forest"):
        raise typer.BadParameter("--model must be logistic, tree or forest")
    horizon_ms = int(horizon_days * DAY_MS) if horizon_days else None
    config = LoyaltyConfig(
        model=model,  # type: ignore[arg-type]
        learning_rate=learning_rate,
        return_horizon_ms=horizon_ms or 7 * DAY_MS,
    )
    if simulate:
        show = sys.stderr.isatty() and not as_json
        with Progress(disable=not show, transient=True) as bar:
            task = bar.add_task("simulating", total=1.0)
            report = simulate_loyalty(
                config,
                SimulationConfig(seed=seed, users_per_minute=users_per_minute),
                days=days,
                progress=lambda done: bar.update(task, completed=done),
            )
        typer.echo(json.dumps(report) if as_json else json.dumps(report, indent=2))
        return
    if events is None or cutoff is None:
        raise typer.BadParameter("give --events and --cutoff, or --simulate")
    handle = scores_out.open("w", newline="") if scores_out else None
    writer = csv.writer(handle) if handle else None
    if writer:
        writer.writerow(["user_id", "score"])
    try:
        result = evaluate_activity_log(
            read_activity_log(events),
            parse_time_ms(cutoff),
            horizon_ms,
            config,
            scores_out=(lambda user, score: writer.writerow([user, f"{score:.6f}"]))
            if writer
            else None,
        )
    finally:
        if handle:
            handle.close()
    report = {"events": str(events), "cutoff": cutoff, "horizon_days": horizon_days, **result}
    typer.echo(json.dumps(report) if as_json else json.dumps(report, indent=2))


def _read_topic(settings: Settings, topic: str, idle_seconds: float = 3.0) -> list[Any]:
    """Every record of a topic, from the start until nothing new arrives for a while
    (end offsets are not trusted: the embedded broker counts record batches in them)."""
    from kafka import KafkaConsumer

    from stream.topics import kafka_client_options

    consumer = KafkaConsumer(
        topic,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=int(idle_seconds * 1000),
        **kafka_client_options(settings),
    )
    try:
        return list(consumer)
    finally:
        consumer.close()


def report_retention(
    simulate: Annotated[
        bool, typer.Option(help="From a simulated run instead of the live examples topic")
    ] = False,
    days: Annotated[float, typer.Option(help="Simulated days (--simulate)")] = 14.0,
    seed: int = 42,
    min_users: Annotated[int, typer.Option(help="Hide values with fewer labels")] = 20,
    png: Annotated[Path | None, typer.Option(help="Write the chart here")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only")] = False,
) -> None:
    """What drives retention: return rates by os, browser, device, plan, entry page, referrer
    and country (Wilson 95% intervals), and the model's strongest features."""
    from processors.loyalty_eval import simulate_loyalty
    from processors.simulator import SimulationConfig
    from stream.cli import _settings

    examples: list[ResolvedExample] = []
    strongest: dict[str, list[tuple[str, float]]] = {}
    started = time.perf_counter()
    if simulate:
        report = simulate_loyalty(
            LoyaltyConfig(), SimulationConfig(seed=seed, users_per_minute=2.0), days, None, examples
        )
        strongest = report["strongest_features"]
        source = f"simulation seed {seed}, {days:g} days"
    else:
        settings = _settings()
        for record in _read_topic(settings, settings.loyalty_examples_topic):
            if record.value:
                try:
                    examples.append(decode_example(record.value))
                except Exception:  # not ours to judge here: skip what does not decode
                    continue
        source = settings.loyalty_examples_topic
        key = settings.model_signing_key
        snapshots = [r.value for r in _read_topic(settings, settings.loyalty_models_topic, 2.0)]
        if key is not None and snapshots and snapshots[-1]:
            models = LoyaltyModels(LoyaltyConfig(model=settings.loyalty_model))
            try:
                models.load(snapshots[-1], key.get_secret_value().encode())
                strongest = {t: models.strongest_features(t) for t in TARGETS}
            except ValueError as error:
                typer.echo(f"model snapshot not used: {error}", err=True)
    rows = retention_rates(examples, min_users=min_users)
    if png:
        write_retention_png(rows, png, f"return within the horizon, {source}")
    payload = {
        "source": source,
        **retention_report(examples, strongest, min_users),
        "seconds": round(time.perf_counter() - started, 1),
    }
    if as_json:
        typer.echo(json.dumps(payload))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"Return rates ({payload['labels']} resolved labels, {source})")
    for column in ("attribute", "value", "users", "returned", "rate", "95% interval"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(r.attribute, r.value, str(r.users), str(r.returned), f"{r.rate:.3f}",
                      f"{r.low:.3f}-{r.high:.3f}")  # fmt: skip
    console.print(table)
    for target, pairs in strongest.items():
        console.print(
            f"strongest features ({target}): " + ", ".join(f"{n} {w:+.2f}" for n, w in pairs)
        )


def write_retention_png(rows: list[RateRow], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attributes = list(dict.fromkeys(r.attribute for r in rows))
    figure, axes = plt.subplots(
        1, max(len(attributes), 1), figsize=(3 + 2.6 * len(attributes), 4.5), squeeze=False
    )
    for axis, attribute in zip(axes[0], attributes, strict=False):
        group = [r for r in rows if r.attribute == attribute]
        x = range(len(group))
        axis.bar(
            x,
            [r.rate for r in group],
            yerr=[[r.rate - r.low for r in group], [r.high - r.rate for r in group]],
            capsize=2,
            color="#55a868",
        )
        axis.set_xticks(list(x), [r.value for r in group], rotation=60)
        axis.set_title(attribute)
        axis.set_ylim(0, 1)
    axes[0][0].set_ylabel("returned (95% Wilson interval)")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
