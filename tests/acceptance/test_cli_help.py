"""`procq --help` and every subcommand's --help are complete: each option shows its
environment variable, and the worker exposes every `Worker` option."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cli_support import procq

import procq_sqla
from procq_sqla.worker import Worker

COMMANDS = [
    ["worker"],
    ["defer"],
    ["migrate"],
    ["healthchecks"],
    ["demo"],
    ["jobs"],
    ["jobs", "list"],
    ["jobs", "show"],
    ["jobs", "retry"],
    ["jobs", "cancel"],
    ["jobs", "queues"],
    ["jobs", "prune"],
]
NO_DB = "postgresql://nobody@127.0.0.1:1/none"  # --help must never connect


def options_of(help_text: str) -> list[str]:
    return re.findall(r"^\s+(?:-\w, )?(--[\w-]+)", help_text, flags=re.MULTILINE)


def test_top_level_help_lists_every_command_and_the_exit_codes() -> None:
    result = procq("--help", db_url=NO_DB)
    assert result.returncode == 0, result.stderr
    for name in ("worker", "defer", "jobs", "healthchecks", "migrate", "demo"):
        assert re.search(rf"^\s+{name}\s", result.stdout, flags=re.MULTILINE), name
    for text in ("PROCQ_APP", "PROCQ_LOG_FORMAT", "PROCQ_VERBOSE", "Exit codes", "3 `defer`"):
        assert text in result.stdout


def test_version_prints_the_package_version() -> None:
    result = procq("--version", db_url=NO_DB)
    assert result.returncode == 0
    assert procq_sqla.__version__ in result.stdout


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_option_of_every_command_shows_its_environment_variable(
    command: list[str],
) -> None:
    result = procq(*command, "--help", db_url=NO_DB)
    assert result.returncode == 0, result.stderr
    assert "Usage: procq " + " ".join(command) in result.stdout
    flat = " ".join(result.stdout.split())
    for opt in options_of(result.stdout):
        if opt == "--help":
            continue
        if opt == "--database-url":
            assert "PROCQ_DATABASE_URL" in flat
            continue
        name = opt.removeprefix("--").split("/")[0].replace("-", "_").upper()
        if command == ["worker"] and name == "ONE_SHOT":
            name = "WAIT"  # --wait/--one-shot is one option
        if command == ["worker"] and name == "NO_LISTEN_NOTIFY":
            name = "LISTEN_NOTIFY"
        expected = "PROCQ_" + "_".join(c.upper() for c in command) + "_" + name
        assert expected in flat.replace("- ", "-").replace(" _", "_"), (opt, expected)


def test_worker_help_covers_every_worker_option() -> None:
    result = procq("worker", "--help", db_url=NO_DB)
    flat = " ".join(result.stdout.split())
    params = inspect.signature(Worker.__init__).parameters
    internal = {"self", "app", "connector", "install_signal_handlers"}
    for name in params:
        if name in internal:
            continue
        assert "--" + name.replace("_", "-") in flat or name == "wait", name
        assert f"PROCQ_WORKER_{name.upper()}" in flat.replace("- ", "-"), name
    assert "--one-shot" in flat


def test_the_installed_procq_script_is_the_same_command() -> None:
    script = Path(sys.executable).with_name("procq")
    assert script.exists(), "the `procq` console script is not installed"
    result = subprocess.run(
        [str(script), "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0 and procq_sqla.__version__ in result.stdout
