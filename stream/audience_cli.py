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
        f"planted audience {report['planted_categories']}, seed {report['seed']}, "
        f"{report['hours']:g} h"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
