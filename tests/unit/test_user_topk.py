"""`appetence evaluate user-topk`: metrics and the recommendations file, end to end."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path


def write(path: Path, rows: list[tuple[str, str, int]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["user_id", "item_id", "timestamp"])
        writer.writerows(rows)
    return path


def test_user_topk_cli_scores_and_writes_recommendations(tmp_path: Path) -> None:
    # Everyone who reads a goes on to b; u9 has read a only, and will read b.
    train = [(f"u{u}", item, u * 10 + t) for u in range(5) for t, item in enumerate("ab")]
    train.append(("u9", "a", 100))
    test = [("u9", "b", 200)]
    out = tmp_path / "recs.csv"
    result = subprocess.run(
        [sys.executable, "-m", "stream.cli", "evaluate", "user-topk",
         "--train", str(write(tmp_path / "train.csv", train)),
         "--test", str(write(tmp_path / "test.csv", test)),
         "--k", "1", "--recommendations-out", str(out), "--json"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    report = json.loads(result.stdout)
    assert report["users"] == 1
    assert report["precision@1"] == report["recall@1"] == report["ndcg@1"] == 1.0
    assert out.read_text().splitlines() == ["user_id,item_id,rank", "u9,b,1"]
