"""`import procq_sqla` needs only psycopg 3: the optional drivers load on first use."""

from __future__ import annotations

import json
import subprocess
import sys

OPTIONAL = ("psycopg2", "aiopg")


def _loaded_after(code: str) -> list[str]:
    script = (
        "import json, sys\n"
        f"{code}\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        f"{OPTIONAL!r})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


def test_import_procq_sqla_loads_neither_psycopg2_nor_aiopg() -> None:
    assert _loaded_after("import procq_sqla; from procq_sqla import App, PsycopgConnector") == []


def test_optional_connectors_load_their_driver_on_first_use() -> None:
    loaded = _loaded_after("import procq_sqla; procq_sqla.Psycopg2Connector")
    assert "psycopg2" in loaded
    assert "aiopg" not in loaded
    assert "aiopg" in _loaded_after("from procq_sqla import AiopgConnector")
