"""The wheel ships the Alembic revisions inside the package, never as `alembic/`."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_carries_the_revisions_inside_the_package(tmp_path: Path) -> None:
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = tmp_path.glob("procq_sqla-*.whl")
    names = zipfile.ZipFile(wheel).namelist()

    assert "procq_sqla/_alembic/versions/procq_0001_initial.py" in names
    assert "procq_sqla/_alembic/versions/procq_0002_lean_inserts.py" in names
    assert "procq_sqla/_alembic/versions/procq_0003_status_domain.py" in names
    assert "procq_sqla/_alembic/env.py" in names
    assert "procq_sqla/sql/queries.sql" in names
    assert "procq_sqla/py.typed" in names
    assert not [n for n in names if n.startswith("alembic/")], "would shadow Alembic itself"
    assert not [
        n for n in names if n.startswith("procq_sqla/_alembic/") and n.endswith("__init__.py")
    ]


def test_installed_package_finds_its_migrations() -> None:
    from procq_sqla import migrations

    versions = Path(migrations.versions_location())
    assert (versions / "procq_0001_initial.py").is_file()
    assert migrations.head_revision() == "procq_0003"
