"""The command's help and small conveniences: an example per command, --version, pasteable demo
lines, the config search path."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from ledger.config import config_search_path
from scheduler.cli import main
from scheduler.cli.demo import _show
from scheduler.cli.parser import _EXAMPLES, build_parser

COMMANDS = sorted(_EXAMPLES)


def test_every_command_has_an_example() -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    names = set(commands.choices)
    assert names - {"sandbox", "demo"} == set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_each_commands_help_ends_with_its_example_not_the_long_notes(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert f"example:\n  smsledger {_EXAMPLES[command].split('smsledger ', 1)[1]}" in out
    assert "  0    done" not in out, "the exit codes are the top --help's"


def test_version_prints_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("smsledger 0.")


def test_the_demo_prints_commands_that_can_be_pasted(capsys: pytest.CaptureFixture[str]) -> None:
    _show(["--config", "/tmp/a folder/smsledger.toml", "send", "--text", "Merhaba dünya"])
    assert capsys.readouterr().out == (
        "\n$ smsledger --config '/tmp/a folder/smsledger.toml' send --text 'Merhaba dünya'\n"
    )


def test_the_config_search_path_is_here_then_the_users_then_the_systems(tmp_path: Path) -> None:
    assert config_search_path({"XDG_CONFIG_HOME": str(tmp_path)}) == [
        Path("smsledger.toml"),
        tmp_path / "smsledger" / "smsledger.toml",
        Path("/etc/smsledger/smsledger.toml"),
    ]
    assert config_search_path({})[1] == Path.home() / ".config" / "smsledger" / "smsledger.toml"
