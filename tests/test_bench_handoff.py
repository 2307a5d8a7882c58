"""The hand-off benchmark runs, and ours decides the same STOREs one newcomer at a time as in one batch."""

from __future__ import annotations

import json

from aether.simulations import bench_handoff


def test_bench_handoff_small_run(tmp_path, capsys):
    out = tmp_path / "handoff.json"
    assert bench_handoff.main(["--held", "300", "--newcomers", "4", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    (row,) = report["results"]
    assert row["held"] == 300 and row["newcomers"] == 4
    # The joining half is handed values; batching changes the cost, never the decisions.
    assert row["ours_stores"] > 0 and row["ours_stores"] == row["ours_batched_stores"]
    for field in ("stock_ms_per_newcomer", "ours_ms_per_newcomer", "ours_batched_ms_per_newcomer"):
        assert row[field] > 0
    assert "held" in capsys.readouterr().out


def test_bench_handoff_refuses_bad_arguments(capsys):
    for argv in (["--held", "x"], ["--held", "0"], ["--newcomers", "1"]):
        try:
            bench_handoff.main(argv)
        except SystemExit as e:
            assert e.code == 2
        else:
            raise AssertionError(f"{argv} accepted")
