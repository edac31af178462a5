"""``appetence evaluate audience``: the look-alike learner against a planted audience."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer


def evaluate_audience(
    simulate: Annotated[bool, typer.Option(help="Plant an audience in simulated traffic")] = True,
    hours: Annotated[float, typer.Option(help="Simulated hours")] = 12.0,
    seed: int = 42,
    users_per_minute: Annotated[float, typer.Option(help="Simulated new visitors")] = 20.0,
    seed_share: Annotated[float, typer.Option(help="Share of planted users given as seeds")] = 0.5,
    holdout_share: Annotated[float, typer.Option(help="Share of seeds never learned")] = 0.2,
    negative_ratio: Annotated[int, typer.Option(help="Negatives learned per seed")] = 3,
    png: Annotated[
        Path | None, typer.Option(help="Write the lift and representation charts here")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only")] = False,
) -> None:
    """Held-out top-decile lift, recall of the planted non-seed users, and which categories
    come out over-represented (q < 0.01), on a planted audience in simulated traffic."""
    from rich.progress import Progress

    from processors.audience_eval import simulate_audience
    from processors.audiences import AudienceConfig
    from processors.simulator import SimulationConfig

    if not simulate:
        raise typer.BadParameter("only --simulate is available; live audiences are not wired yet")
    config = AudienceConfig(holdout_share=holdout_share, negative_ratio=negative_ratio)
    show = sys.stderr.isatty() and not as_json
    with Progress(disable=not show, transient=True) as bar:
        task = bar.add_task("simulating", total=1.0)
        report = simulate_audience(
            config,
            SimulationConfig(seed=seed, users_per_minute=users_per_minute),
            hours=hours,
            seed_share=seed_share,
            progress=lambda done: bar.update(task, completed=done),
        )
    if png:
        write_audience_png(report, png)
    typer.echo(json.dumps(report) if as_json else json.dumps(report, indent=2))


def write_audience_png(report: dict[str, Any], path: Path) -> None:
    """Lift per decile (with cumulative capture) and the representation ratios."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    lift = report["lift"]
    deciles = [row["decile"] for row in lift]
    left.bar(deciles, [row["lift"] for row in lift], color="#4c72b0", label="lift")
    left.axhline(1.0, color="grey", linewidth=0.8)
    left.set_xticks(deciles)
    left.set_xlabel("decile (1 = highest scores)")
    left.set_ylabel("lift (held-out seeds)")
    twin = left.twinx()
    twin.plot(deciles, [row["cumulative_capture"] for row in lift], color="#dd8452", marker="o")
    twin.set_ylabel("cumulative capture")
    twin.set_ylim(0, 1.05)
    left.set_title("Lift on held-out seed members")
    rows = [r for r in report["representation"] if r["feature"].startswith("cat=")][:12]
    names = [r["feature"] for r in rows]
    ratios = [r["ratio"] for r in rows]
    colours = [
        "#c4c4c4" if r["q_value"] >= 0.01 else "#55a868" if r["ratio"] > 1 else "#c44e52"
        for r in rows
    ]
    right.barh(names, ratios, color=colours)
    right.axvline(1.0, color="grey", linewidth=0.8)
    right.invert_yaxis()
    right.set_xlabel("share in audience / in the rest (q < 0.01: green over, red under)")
    right.set_title("Category representation among seed members")
    figure.suptitle(
        f"audience {report['planted_categories']}, seed {report['seed']}, {report['hours']:g} h"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def read_user_ids(path: Path) -> list[str]:
    """User ids from a CSV with a ``user_id`` column, or one id per line."""
    import csv

    with path.open(newline="") as handle:
        first = handle.readline()
        handle.seek(0)
        if "user_id" in first.split(","):
            return [row["user_id"].strip() for row in csv.DictReader(handle)]
        return [line.strip() for line in handle if line.strip()]


def load_audience(
    audience_id: Annotated[str, typer.Argument(help="Audience id")],
    file: Annotated[Path, typer.Argument(help="CSV with a user_id column, or one id per line")],
    remove: Annotated[bool, typer.Option(help="Remove these members instead")] = False,
) -> None:
    """Add (or remove) seed members of an audience; invalid ids are reported, not sent."""
    from processors.audiences import seed_key, valid_id
    from stream.cli import _settings
    from stream.topics import ensure_topics, make_producer

    if not valid_id(audience_id) or "/" in audience_id:
        raise typer.BadParameter("audience id: 1-128 printable characters, no '/'")
    settings = _settings()
    ensure_topics(settings)
    producer = make_producer(settings)
    sent, rejected = 0, []
    for user_id in read_user_ids(file):
        if not valid_id(user_id):
            rejected.append(user_id[:128])
            continue
        value = None if remove else b"1"
        producer.send(settings.audiences_topic, key=seed_key(audience_id, user_id), value=value)
        sent += 1
    producer.flush()
    producer.close()
    verb = "removed" if remove else "added"
    typer.echo(json.dumps({"audience_id": audience_id, verb: sent, "rejected": rejected}))


def report_audience(
    audience_id: Annotated[str, typer.Argument(help="Audience id")],
    png: Annotated[Path | None, typer.Option(help="Write the charts here")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only")] = False,
) -> None:
    """The learner's decile table (users, held-out responders, rate, lift, cumulative
    capture) and representation table of a live audience, from the newest signed snapshot."""
    from processors.signing import verified_unpickle
    from stream.cli import _settings
    from stream.loyalty_cli import _read_topic

    settings = _settings()
    if settings.model_signing_key is None:
        raise typer.BadParameter("set APPETENCE_MODEL_SIGNING_KEY (the workers' key)")
    records = [r for r in _read_topic(settings, settings.audience_models_topic, 2.0) if r.value]
    if not records:
        typer.echo("no audience snapshot published yet", err=True)
        raise typer.Exit(1)
    snapshot = verified_unpickle(
        records[-1].value, settings.model_signing_key.get_secret_value().encode()
    )
    report = snapshot["reports"].get(audience_id)
    if report is None:
        typer.echo(f"no audience {audience_id!r} in the newest snapshot", err=True)
        raise typer.Exit(1)
    if png:
        write_audience_png({**report, "planted_categories": audience_id, "seed": "live",
                            "hours": 0}, png)  # fmt: skip
    if as_json:
        typer.echo(json.dumps(report))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    lift = Table(title=f"Audience {audience_id}: {report['members']} seed members, "
                 f"{report['population']} users scored (held-out seeds respond)")  # fmt: skip
    for column in ("decile", "users", "held-out responders", "rate", "lift", "cum. capture"):
        lift.add_column(column, justify="right")
    for row in report["lift"]:
        lift.add_row(str(row["decile"]), str(row["users"]), str(row["responders"]),
                     f"{row['rate']:.4f}", f"{row['lift']:.2f}",
                     f"{row['cumulative_capture']:.2f}")  # fmt: skip
    console.print(lift)
    rep = Table(title="Representation among seed members vs the rest (BH q-values)")
    for column in ("feature", "audience", "share", "rest", "share", "ratio", "q"):
        rep.add_column(column, justify="right")
    for row in report["representation"][:30]:
        rep.add_row(row["feature"], str(row["audience_users"]), f"{row['audience_share']:.3f}",
                    str(row["rest_users"]), f"{row['rest_share']:.3f}", f"{row['ratio']:.2f}",
                    f"{row['q_value']:.2g}")  # fmt: skip
    console.print(rep)
