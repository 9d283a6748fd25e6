"""Printing the results as a table (rich) and describing the machine they came from."""

from __future__ import annotations

import os
import platform
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from .common import Measure


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "jobs/s":
        return f"{value:,.0f}"
    return f"{value:,.2f}"


def spread(values: list[float], unit: str) -> str:
    if not values:
        return "—"
    return f"{fmt(min(values), unit)}-{fmt(max(values), unit)}"


def verdict(met: bool | None) -> str:
    if met is None:
        return "—"
    return "[green]yes[/green]" if met else "[red]no[/red]"


def table(measures: list[Measure], facts: dict[str, Any], runs: int) -> Table:
    title = (
        f"procq_sqla bench — PostgreSQL {facts.get('server_version', '?')} "
        f"(fsync={facts.get('fsync')}, synchronous_commit={facts.get('synchronous_commit')}), "
        f"{facts.get('cpus')} CPUs, {runs} run(s), medians"
    )
    t = Table(title=title, show_lines=False)
    t.add_column("workload")
    t.add_column("unit")
    t.add_column("procq_sqla", justify="right")
    t.add_column("spread", justify="right")
    t.add_column("baseline (same run)")
    t.add_column("baseline", justify="right")
    t.add_column("ratio", justify="right")
    t.add_column("target")
    t.add_column("met")
    t.add_column("procrastinate", justify="right")
    for m in measures:
        if not m.runs:
            t.add_row(m.title, m.unit, m.note or "not available", "", "", "", "", m.target, "—", "")
            continue
        t.add_row(
            m.title,
            m.unit,
            fmt(m.median, m.unit),
            spread(m.runs, m.unit),
            m.baseline_title or "",
            fmt(m.baseline_median, m.unit) if m.baseline_runs else "",
            f"{m.ratio:.2f}x" if m.ratio is not None else "",
            m.target,
            verdict(m.met),
            fmt(m.peer, m.unit) if m.peer is not None else "",
        )
    return t


def print_table(measures: list[Measure], facts: dict[str, Any], runs: int) -> None:
    console = Console(width=max(Console().width, 200))
    console.print(table(measures, facts, runs))
    for m in measures:
        if m.note and m.runs:
            console.print(f"[dim]{m.name}: {m.note}[/dim]")


def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": sys.version.split()[0],
        "loadavg_at_start": os.getloadavg(),
    }
