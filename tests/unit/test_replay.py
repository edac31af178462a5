"""Replay reads every supported dataset format and compresses time by the speed factor."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream.replay import read_clicks, schedule


def test_session_rec_clicks_are_time_ordered_and_scheduled_by_speed(tmp_path: Path) -> None:
    data = tmp_path / "clicks.tsv"
    data.write_text("SessionId\tItemId\tTime\n2\tb\t160.0\n1\ta\t100.0\n1\tc\t220.0\n")
    clicks = read_clicks(data, "session-rec")
    assert [c[2] for c in clicks] == ["a", "b", "c"]
    assert [round(offset, 3) for offset, *_ in schedule(clicks, speed=60)] == [0.0, 1.0, 2.0]


def test_diginetica_and_csv_formats(tmp_path: Path) -> None:
    digi = tmp_path / "views.csv"
    digi.write_text(
        "session_id;user_id;item_id;timeframe;eventdate\n1;NA;x;5000;2016-05-09\n1;NA;y;1000;2016-05-09\n"
    )
    assert [c[2] for c in read_clicks(digi, "diginetica")] == ["y", "x"]
    plain = tmp_path / "clicks.csv"
    plain.write_text("session_id,item_id,timestamp\n7,z,3\n7,w,1\n")
    assert [c[2] for c in read_clicks(plain, "csv")] == ["w", "z"]


RSC15 = Path(__file__).resolve().parents[3] / "shared" / "data" / "rsc15-100k" / "test.tsv"


@pytest.mark.skipif(not RSC15.exists(), reason="shared/data not present")
def test_rsc15_test_file_replays_every_click() -> None:
    assert len(read_clicks(RSC15, "session-rec")) == 13_568
