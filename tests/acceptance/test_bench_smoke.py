"""`python -m bench` runs end to end and writes ratios (speed itself is never asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_bench_writes_a_ratio_for_each_workload_it_ran(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--runs",
            "1",
            "--no-peer",
            "--only",
            "defer_sync_psycopg",
            "--only",
            "drain_async",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        env={**os.environ},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    results = {r["name"]: r for r in json.loads(out.read_text())["results"]}
    assert set(results) == {"defer_sync_psycopg", "drain_async"}
    for result in results.values():
        assert result["median"] > 0
        assert result["ratio"] > 0
        assert result["baseline_median"] > 0
    assert "defer(), SyncPsycopgConnector" in run.stdout
