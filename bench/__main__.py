"""`python -m bench`: run the workloads, print the table, write the JSON.

    python -m bench                 # every workload, 3 runs each (several minutes)
    python -m bench --quick         # small sizes, for CI (about a minute)
    python -m bench --only drain_async --only latency --runs 5

The database is PROCQ_DATABASE_URL (or the PG* variables), else an embedded PostgreSQL
started for the run at its default durability (fsync and synchronous_commit on).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
import time
from typing import Any

from rich.console import Console

import procq_sqla

from .common import BenchDB, Measure, Sizes, dump_json
from .report import machine, print_table
from .suite import WORKLOADS, Context, add_peer_figures


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="procq_sqla against raw PostgreSQL, same server."
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (CI, ~1 minute)")
    parser.add_argument("--runs", type=int, default=None, help="runs per workload (default 3)")
    parser.add_argument("--json", default="bench/results.json", help="where to write results")
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(WORKLOADS),
        help="run only this workload (repeatable)",
    )
    parser.add_argument("--no-peer", action="store_true", help="skip procrastinate's figures")
    args = parser.parse_args(argv)
    if args.runs is None:
        args.runs = 3
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("procq_sqla").setLevel(logging.WARNING)
    console = Console(stderr=True)

    def log(message: str) -> None:
        console.print(f"[dim]{time.strftime('%H:%M:%S')} {message}[/dim]")

    sizes = Sizes.quick() if args.quick else Sizes()
    names = args.only or list(WORKLOADS)
    db = BenchDB()
    started = time.monotonic()
    measures: list[Measure] = []
    ctx = Context(db=db, sizes=sizes, runs=args.runs, log=log)
    try:
        db.create()
        facts = {**db.server_facts(), **machine()}
        log(
            f"PostgreSQL {facts['server_version']} fsync={facts['fsync']} "
            f"synchronous_commit={facts['synchronous_commit']}, {facts['cpus']} CPUs"
        )
        if facts["fsync"] != "on" or facts["synchronous_commit"] != "on":
            log("[yellow]warning: the server is not at default durability[/yellow]")
        for name in names:
            log(f"workload {name}")
            measures.extend(WORKLOADS[name](ctx))
        peer_note = None if args.no_peer else add_peer_figures(ctx, measures)
        if peer_note:
            log(peer_note)
    finally:
        db.drop()
        if ctx.big_db is not None:
            ctx.big_db.drop()
    print_table(measures, facts, args.runs)
    payload: dict[str, Any] = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "procq_sqla": procq_sqla.__version__,
        "quick": args.quick,
        "runs": args.runs,
        "sizes": sizes.__dict__,
        "machine": facts,
        "elapsed_s": round(time.monotonic() - started, 1),
        "results": [m.as_dict() for m in measures],
    }
    dump_json(args.json, payload)
    log(f"results written to {args.json} ({payload['elapsed_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
