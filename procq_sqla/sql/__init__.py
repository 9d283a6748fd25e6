"""Named SQL queries, loaded once from `queries.sql`.

All SQL lives in that one file; Python code refers to queries by name
(`queries["defer_job"]`). The loader is pure and cached, so importing it costs one read.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_HEADER = re.compile(r"^-- name: (\w+) --$", re.MULTILINE)


def parse_queries(text: str) -> dict[str, str]:
    """Split a file of `-- name: x --` blocks into {name: sql}, without comments."""
    parts = _HEADER.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = [line for line in body.splitlines() if not line.lstrip().startswith("--")]
        queries[name] = "\n".join(lines).strip()
    return queries


def expand_templates(queries: dict[str, str]) -> dict[str, str]:
    """The three claim queries from the one `claim_jobs` template and its fragments, and
    the skipping batch insert from `batch_defer_jobs`."""
    queries["batch_defer_jobs_skip_enqueued"] = queries["batch_defer_jobs"].replace(
        "/*on_conflict*/", queries["batch_defer_on_conflict"]
    )
    template = queries["claim_jobs"]
    lock = queries["claim_filter_lock_queues"]
    variants = {
        "claim_jobs_any_queue": ("", ""),
        "claim_jobs_in_queue": (queries["claim_filter_one_queue"], lock),
        "claim_jobs_in_queues": (queries["claim_filter_queues"], lock),
    }
    for name, (queue_filter, lock_filter) in variants.items():
        queries[name] = template.replace("/*queue_filter*/", queue_filter).replace(
            "/*lock_queue_filter*/", lock_filter
        )
    return queries


@cache
def load_queries() -> dict[str, str]:
    text = resources.files(__package__).joinpath("queries.sql").read_text(encoding="utf-8")
    return expand_templates(parse_queries(text))


class _Queries:
    """Mapping-like access that fails loudly on a misspelt query name."""

    def __getitem__(self, name: str) -> str:
        try:
            return load_queries()[name]
        except KeyError:
            raise KeyError(f"no SQL query named {name!r} in procq_sqla/sql/queries.sql") from None


queries = _Queries()
