"""Running `python -m procq_sqla` as a subprocess for the CLI acceptance tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
APP = "cli_app:app"


def cli_env(db_url: str, **extra: str) -> dict[str, str]:
    """The environment of a `procq` run: no stray PROCQ_* variable, the test database,
    this folder importable (for `cli_app`), and a wide terminal for tables. An empty
    `db_url` names no database at all (no PROCQ_DATABASE_URL, no PG* variable)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROCQ_")}
    if db_url:
        env["PROCQ_DATABASE_URL"] = db_url
    else:  # no database named at all
        env = {k: v for k, v in env.items() if not k.startswith("PG")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    env["COLUMNS"] = "200"
    env.update(extra)
    return env


def procq(
    *args: str, db_url: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run `python -m procq_sqla ARGS` to completion and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "procq_sqla", *args],
        env=cli_env(db_url, **(env or {})),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_procq(
    *args: str, db_url: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """Start `python -m procq_sqla ARGS` in the background (a worker, say)."""
    return subprocess.Popen(
        [sys.executable, "-m", "procq_sqla", *args],
        env=cli_env(db_url, **(env or {})),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The single `Error: ...` line of a failed run (and proof there is no traceback)."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]
