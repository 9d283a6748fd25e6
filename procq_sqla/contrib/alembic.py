"""Folding procq_sqla's schema into an application's own Alembic environment.

An application that already runs Alembic adds procq's revisions to its
`version_locations` (`alembic upgrade heads` then applies both branches, `procq@head`
only ours) and passes `include_name` (or `include_object`) to `context.configure()` in
its env.py, so that autogenerate never proposes to drop the `procq_*` tables it does not
know about. See the README's "Alembic inside your own history".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..migrations import VERSION_TABLE, versions_location
from ..models import TABLE_NAMES

PREFIX = "procq_"
RESOURCE = "procq_sqla:_alembic/versions"  # the same folder, named as a package resource

IncludeName = Callable[[str | None, str, Mapping[str, str | None]], bool]
IncludeObject = Callable[[Any, str | None, str, bool, Any], bool]


def is_procq_name(name: str | None) -> bool:
    """True for the names of procq_sqla's tables, indexes, constraints and version table."""
    if not name:
        return False
    return name in TABLE_NAMES or name == VERSION_TABLE or name.startswith(PREFIX)


def include_name(name: str | None, type_: str, parent_names: Mapping[str, str | None]) -> bool:
    """For `context.configure(include_name=...)`: skip procq's reflected objects."""
    if type_ == "schema":
        return True
    if is_procq_name(name):
        return False
    return not is_procq_name(parent_names.get("table_name"))


def include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """For `context.configure(include_object=...)`: skip procq's tables and their parts."""
    if is_procq_name(name):
        return False
    table = getattr(obj, "table", None)
    return not is_procq_name(getattr(table, "name", None))


def excluding_procq(hook: IncludeName | None = None) -> IncludeName:
    """`include_name` that also applies the application's own hook."""

    def combined(name: str | None, type_: str, parent_names: Mapping[str, str | None]) -> bool:
        if not include_name(name, type_, parent_names):
            return False
        return hook is None or hook(name, type_, parent_names)

    return combined


def version_locations(*own: str) -> str:
    """The `version_locations` value for a Config built in code: yours, then procq's."""
    return " ".join([*own, versions_location()])
