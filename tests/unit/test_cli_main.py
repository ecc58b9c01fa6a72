"""`scheduler.cli.main` in-process: every usage and input error is one line and exit 2.

The acceptance tests run a sample of these through the installed command; here the rest run
without a subprocess each. No provider is reachable (`base_url` points at a closed port), so an
error raised here also proves no call was attempted.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import structlog
from helpers import CONFIG as BASE_CONFIG

from ledger import (
    CancelRefused,
    ConfigError,
    InvalidInput,
    Ledger,
    LedgerError,
    LedgerUnavailable,
    OrderNotFound,
    RegistrationConflict,
)
from scheduler.cli import EXIT_FAILED, EXIT_USAGE, exit_code_for, main
from scheduler.provider.errors import ProviderAuthError, ProviderTransientError, SendTimeError

CONFIG = (
    BASE_CONFIG
    + """\
[api]
base_url = "http://127.0.0.1:9"
"""
)


@pytest.fixture(autouse=True)
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Run in a folder with a Berlin-time config; leave structlog as it was found."""
    for name in ("ILETIMERKEZI_API_KEY", "ILETIMERKEZI_API_HASH", "SMSLEDGER_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "smsledger.toml").write_text(CONFIG.format(zone="Europe/Berlin"))
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    structlog.reset_defaults()


@pytest.fixture
def ledger_there(work: Path) -> None:
    """An empty ledger where the config names it: reading commands never create one."""
    Ledger(f"sqlite:///{work / 'ledger.db'}").close()


def one_error(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("smsledger: error: ")
    assert "Traceback" not in captured.err
    assert captured.out == ""
    return lines[0]


def in_an_hour() -> str:
    when = (datetime.now(UTC) + timedelta(hours=1)).replace(second=0, microsecond=0)
    return when.strftime("%Y-%m-%dT%H:%MZ")


SEND = ["send", "--sender", "ACME", "--to", "905551112233", "--text", "hi"]


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["list", "--colour"], ["unrecognized arguments: --colour", "smsledger list --help"]),
        (["register", "2"], ["the following arguments are required: --send-at"]),
        (["cancel", "1", "--wait", "-1"], ["--wait", "'-1'"]),
        (["cancel", "1", "--wait", "nan"], ["--wait", "'nan'"]),
        (["cancel", "1", "--wait", "soon"], ["'soon' is not a number of seconds"]),
        (["cancel"], ["ORDER_ID"]),
        ([*SEND, "--at", in_an_hour(), "--iys", "2"], ["--iys", "'2'"]),
        ([*SEND, "--at", in_an_hour(), "--iys-list", "herkes"], ["--iys-list", "'HERKES'"]),
        ([], ["COMMAND"]),
        (["frobnicate"], ["'frobnicate'"]),
    ],
)
def test_usage_errors_are_one_line_exit_2(
    argv: list[str], needles: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == EXIT_USAGE
    line = one_error(capsys)
    for needle in needles:
        assert needle in line


@pytest.mark.usefixtures("ledger_there")
@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["register", "2", "--send-at", "2030-13-01T10:00"], ["--send-at", "'2030-13-01T10:00'"]),
        (
            ["register", "2", "--send-at", "2030-10-27T02:30"],
            ["happens twice in Europe/Berlin", "2030-10-27T02:30+02:00 or 2030-10-27T02:30+01:00"],
        ),
        (["register", "2", "--send-at", "2030-03-31T02:30"], ["does not exist in Europe/Berlin"]),
        (["register", "", "--send-at", "2030-01-01T10:00"], ["order id is empty"]),
        (["register", "a b", "--send-at", "2030-01-01T10:00"], ["'a b'", "spaces"]),
        (["history", "404"], ["order 404 is not in the ledger"]),
        (["status", "404", "--json"], ["order 404 is not in the ledger"]),
        (["cancel", "404"], ["order 404 is not in the ledger"]),
        (["logs", "--level", "loud"], ["--level", "'loud'", "debug, info, warning, error"]),
        (["logs", "--since", "2030-01-01"], ["--since", "'2030-01-01'", "without a time"]),
        (["logs", "--since", "1w"], ["--since", "'1w'", "30s, 10m, 2h, 1d"]),
        ([*SEND, "--at", in_an_hour()], ["no API credentials", "ILETIMERKEZI_API_KEY"]),
        (["run", "--once"], ["no API credentials", "ILETIMERKEZI_API_KEY"]),
    ],
)
def test_input_errors_are_one_line_exit_2(
    argv: list[str], needles: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == EXIT_USAGE
    line = one_error(capsys)
    for needle in needles:
        assert needle in line


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (["--at", in_an_hour(), "--iys", "0", "--iys-list", "TACIR"], ["--iys-list", "--iys 1"]),
        (["--at", in_an_hour(), "--to", " , "], ["--to", "no phone number"]),
        (["--at", in_an_hour(), "--text", " "], ["--text is empty"]),
        (["--at", in_an_hour(), "--label", "x" * 201], ["--label: label is 201 characters", "200"]),
        (["--at", in_an_hour(), "--label", "a\x1b[2Jb"], ["--label", "control character U+001B"]),
        (["--at", "2030-01-01T10:00:30"], ["--at 2030-01-01T10:00:30", "whole minute"]),
        (["--at", "2020-01-01T10:00"], ["--at 2020-01-01T10:00", "not in the future"]),
        (["--at", "2030-03-31T02:30"], ["--at", "does not exist"]),
    ],
)
def test_send_refuses_bad_input_before_any_call(
    extra: list[str],
    needles: list[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    work: Path,
) -> None:
    monkeypatch.setenv("ILETIMERKEZI_API_KEY", "k")
    monkeypatch.setenv("ILETIMERKEZI_API_HASH", "h")
    to = [] if "--to" in extra else ["--to", "905551112233"]
    assert main(["send", "--sender", "ACME", "--text", "hi", *to, *extra]) == EXIT_USAGE
    line = one_error(capsys)
    for needle in needles:
        assert needle in line
    assert not (work / "ledger.db").exists(), "refused before the ledger was even opened"


def test_send_that_cannot_reach_the_provider_is_exit_1_and_records_nothing(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, work: Path
) -> None:
    monkeypatch.setenv("ILETIMERKEZI_API_KEY", "k")
    monkeypatch.setenv("ILETIMERKEZI_API_HASH", "h")
    assert main([*SEND, "--at", in_an_hour()]) == EXIT_FAILED
    assert "never reached the provider" in one_error(capsys)
    with Ledger(f"sqlite:///{work / 'ledger.db'}") as ledger:
        assert ledger.orders() == []


def test_logs_without_a_log_file_is_a_config_error(
    capsys: pytest.CaptureFixture[str], work: Path
) -> None:
    (work / "smsledger.toml").write_text(
        CONFIG.format(zone="UTC").replace('path = "log.jsonl"', 'path = "-"')
    )
    assert main(["logs"]) == EXIT_USAGE
    assert "log.path is '-'" in one_error(capsys)


def test_an_unwritable_log_path_is_a_config_error(
    capsys: pytest.CaptureFixture[str], work: Path
) -> None:
    (work / "blocker").write_text("a file where a folder should be")
    (work / "smsledger.toml").write_text(
        CONFIG.format(zone="UTC").replace("log.jsonl", "blocker/log.jsonl")
    )
    assert main(["list"]) == EXIT_USAGE
    assert "log.path" in one_error(capsys)


@pytest.mark.usefixtures("ledger_there")
def test_debug_prints_the_traceback_before_the_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--debug", "status", "404"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last)")
    assert err.splitlines()[-1] == "smsledger: error: order 404 is not in the ledger"


def test_global_options_also_work_after_the_command(
    capsys: pytest.CaptureFixture[str], work: Path
) -> None:
    (work / "other.toml").write_text(CONFIG.format(zone="Asia/Tokyo"))
    assert main(["register", "1", "--send-at", "2030-01-01T10:00", "--config", "other.toml"]) == 0
    assert "2030-01-01 10:00 +09" in capsys.readouterr().out
    assert main(["status", "404", "--debug"]) == EXIT_USAGE
    assert "Traceback" in capsys.readouterr().err


def test_help_of_a_command_and_of_the_sandbox_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cancel", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--wait SECONDS" in out
    assert "exit codes:" in out
    assert main(["sandbox", "--help"]) == 0
    assert "--port" in capsys.readouterr().out


def test_sandbox_options_are_the_sandboxs_own(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sandbox", "--port", "many"]) == EXIT_USAGE
    assert "--port" in one_error(capsys)


def test_each_error_class_has_its_documented_exit_code() -> None:
    refused = CancelRefused.__new__(CancelRefused)
    assert exit_code_for(ConfigError("x")) == EXIT_USAGE
    assert exit_code_for(InvalidInput("x")) == EXIT_USAGE
    assert exit_code_for(OrderNotFound("1")) == EXIT_USAGE
    assert exit_code_for(RegistrationConflict("1", datetime.now(UTC), datetime.now(UTC))) == 2
    assert exit_code_for(SendTimeError()) == EXIT_USAGE
    assert exit_code_for(refused) == EXIT_FAILED
    assert exit_code_for(LedgerUnavailable("x")) == EXIT_FAILED
    assert exit_code_for(LedgerError("x")) == EXIT_FAILED
    assert exit_code_for(ProviderAuthError(endpoint="get-balance")) == EXIT_FAILED
    assert exit_code_for(ProviderTransientError("x")) == EXIT_FAILED
    assert exit_code_for(RuntimeError("a bug")) is None


@pytest.mark.usefixtures("ledger_there")
def test_reads_of_nothing_say_so(capsys: pytest.CaptureFixture[str], work: Path) -> None:
    assert main(["list", "--state", "cancelled"]) == 0
    assert capsys.readouterr().out == "no orders in state cancelled\n"
    assert main(["list", "--json"]) == 0
    assert capsys.readouterr().out == "[]\n"
    (work / "log.jsonl").write_text('{"event": "x", "level": "info"}\n')
    assert main(["logs", "--order", "nobody"]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"smsledger: no matching log events in {work / 'log.jsonl'}\n"
    assert main(["logs", "--order", "nobody", "--json"]) == 0
    assert capsys.readouterr() == ("", "")


@pytest.mark.usefixtures("ledger_there")
def test_check_without_credentials_is_exit_2_after_checking_the_rest(
    capsys: pytest.CaptureFixture[str], work: Path
) -> None:
    assert main(["check"]) == EXIT_USAGE
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [
        f"config    ok    {work / 'smsledger.toml'} (from the first found of the search path)",
        f"ledger    ok    sqlite:///{work / 'ledger.db'}",
        "daemons   WARN  no daemon is running: this cancel will not be sent (none seen)",
        "provider  FAIL  no API credentials: set api.key and api.hash in smsledger.toml or "
        "ILETIMERKEZI_API_KEY / ILETIMERKEZI_API_HASH",
    ]
    assert captured.err.splitlines() == [
        "warning: daemons: no daemon is running: this cancel will not be sent (none seen)",
        "smsledger: error: provider: no API credentials: set api.key and api.hash in "
        "smsledger.toml or ILETIMERKEZI_API_KEY / ILETIMERKEZI_API_HASH",
    ]


def test_check_reports_an_unreachable_ledger_and_a_provider_that_is_down(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, work: Path
) -> None:
    monkeypatch.setenv("ILETIMERKEZI_API_KEY", "k")
    monkeypatch.setenv("ILETIMERKEZI_API_HASH", "h")
    (work / "smsledger.toml").write_text(
        CONFIG.format(zone="UTC").replace("sqlite:///ledger.db", "sqlite:////nonexistent/d/x.db")
    )
    assert main(["check"]) == EXIT_FAILED
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("ledger    FAIL  no ledger exists at /nonexistent/d/x.db")
    assert out[2].startswith("provider  FAIL  iletiMerkezi get-balance: ConnectError")


def test_logs_escape_control_characters_in_both_forms(
    capsys: pytest.CaptureFixture[str], work: Path
) -> None:
    line = (
        '{"timestamp": "2030-01-01T10:00:00Z", "level": "info", "event": "x", "m": "a\x9bb\u202e"}'
    )
    (work / "log.jsonl").write_text(line + "\n", encoding="utf-8")

    assert main(["logs"]) == 0
    human = capsys.readouterr().out
    assert main(["logs", "--json"]) == 0
    raw = capsys.readouterr().out

    assert "\x9b" not in human + raw and "\u202e" not in human + raw
    assert human.endswith("info  x  -  m=a\\x9bb\\u202e\n")
    assert json.loads(raw) == json.loads(line)
