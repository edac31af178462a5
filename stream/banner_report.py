"""Render the banner CTR report: a rich table per dimension and one PNG with three panels."""

from __future__ import annotations

from pathlib import Path

from processors.banner_report import CtrRow


def write_png(report: dict[str, list[CtrRow]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display: write files only
    import matplotlib.pyplot as plt

    dimensions = [name for name in ("banner", "position", "day") if report.get(name)]
    figure, axes = plt.subplots(
        1, len(dimensions), figsize=(6 + 4 * len(dimensions), 4.5), squeeze=False
    )
    for axis, name in zip(axes[0], dimensions, strict=True):
        rows = report[name]
        x = range(len(rows))
        ctr = [row.ctr for row in rows]
        errors = [
            [row.ctr - row.ci_low for row in rows],
            [row.ci_high - row.ctr for row in rows],
        ]
        axis.bar(x, ctr, yerr=errors, capsize=2, color="#4c72b0")
        axis.set_xticks(list(x), [row.key for row in rows], rotation=90 if len(rows) > 8 else 0)
        axis.set_title(f"CTR per {name} (95% Wilson interval)")
        axis.set_ylabel("clicks / impressions")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
