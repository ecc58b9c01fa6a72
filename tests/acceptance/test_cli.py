"""The real `smsledger` command in subprocesses: outputs, JSON shapes, exit codes, bad input.

Each test works in its own folder with a `smsledger.toml` naming a ledger and a log there.
Orders a test only needs to exist are registered through the `Ledger` library (fast); the command
is run for what the test is about. Independent commands run two at a time (`run_all`) to keep the
suite quick: each start of the command costs most of a second (SQLAlchemy's import).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers import CONFIG, SMSLEDGER, CommandResult, clean_env, needs_smsledger, run_command

from ledger import Ledger, OrderState
from ledger.heartbeats import NO_DAEMON
from ledger.models import EVENTS_TABLE, ORDERS_TABLE

pytestmark = needs_smsledger

#: What `cancel` and `check` say on stderr when no daemon has finished a pass lately.
NO_DAEMON_WARNING = f"warning: {NO_DAEMON}"


#: One run of the real command (tests/helpers.py).
Result = CommandResult


def run(cwd: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 30) -> Result:
    return run_command(cwd, *args, env=env, timeout=timeout)


def start(cwd: Path, *args: str) -> subprocess.Popen[str]:
    """The command as a running process with its stdout and stderr piped, as text."""
    assert SMSLEDGER is not None
    return subprocess.Popen(
        [SMSLEDGER, *args],
        cwd=cwd,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_all(cwd: Path, *commands: Sequence[str], env: dict[str, str] | None = None) -> list[Result]:
    """Run independent commands two at a time; results in the order given."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda args: run(cwd, *args, env=env), commands))


def at(delta: timedelta) -> str:
    """A send time on a whole minute, at least `delta` from now, as UTC ISO 8601 with a Z."""
    when = (datetime.now(UTC) + delta).replace(second=0, microsecond=0) + timedelta(minutes=1)
    return when.strftime("%Y-%m-%dT%H:%MZ")


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A folder with a smsledger.toml (Istanbul time, ledger and log beside it)."""
    (tmp_path / "smsledger.toml").write_text(CONFIG.format(zone="Europe/Istanbul"))
    return tmp_path


@pytest.fixture
def book(work: Path) -> Iterator[Ledger]:
    """The work folder's ledger, opened in the test process as another program would."""
    with Ledger(f"sqlite:///{work / 'ledger.db'}") as ledger:
        yield ledger


def without_liveness_warning(result: Result) -> Result:
    """The result minus the warning that no daemon runs (these tests start none), asserted once."""
    lines = result.err.splitlines(keepends=True)
    warned = [line for line in lines if line.rstrip("\n") == NO_DAEMON_WARNING]
    assert len(warned) == 1, result.err
    return Result(result.code, result.out, "".join(x for x in lines if x not in warned))


def snapshot(ledger: Ledger) -> list[Any]:
    """Everything the ledger holds, to prove a failed command changed nothing."""
    return [(o, ledger.history(o.order_id)) for o in ledger.orders()]


def assert_one_error_line(result: Result, *needles: str) -> None:
    assert len(result.err_lines) == 1, result.err
    line = result.err_lines[0]
    assert line.startswith("smsledger: error: "), line
    assert "Traceback" not in result.err
    for needle in needles:
        assert needle in line, line


# -- help --------------------------------------------------------------------------------------


def test_help_lists_every_command_and_the_exit_codes(work: Path) -> None:
    result = run(work, "--help")
    assert result.code == 0
    for command in (
        "register",
        "send",
        "cancel",
        "status",
        "list",
        "history",
        "logs",
        "run",
        "check",
        "sandbox",
        "demo",
    ):
        assert f"    {command} " in result.out
    assert "exit codes:" in result.out
    assert "2    usage, input or config error" in result.out


# -- register and the reads --------------------------------------------------------------------


def test_register_then_read_it_back_in_every_form(work: Path) -> None:
    """A naive WHEN is Istanbul time; JSON times are UTC with Z; tables show +03 and countdowns."""
    reg = run(work, "register", "312891245", "--send-at", "2030-01-01T10:00", "--label", "new year")
    assert reg.code == 0, reg.err
    assert reg.err == ""
    assert reg.out.splitlines()[0].split() == [
        "ORDER", "STATE", "SEND", "AT", "DISPATCH", "LABEL", "REASON"
    ]  # fmt: skip
    assert "312891245  scheduled  2030-01-01 10:00 +03  in " in reg.out
    assert "new year  registered" in reg.out

    status_json, status, list_json, history_json, history = run_all(
        work,
        ["status", "312891245", "--json"],
        ["status", "312891245"],
        ["list", "--json"],
        ["history", "312891245", "--json"],
        ["history", "312891245"],
    )
    assert all(r.code == 0 and r.err == "" for r in (status_json, status, list_json))
    order = status_json.json()
    assert set(order) == {
        "order_id",
        "state",
        "send_at",
        "label",
        "reason",
        "cancel_requested_at",
        "cancel_attempts",
        "last_provider_code",
        "created_at",
        "updated_at",
        "delivery",
    }
    assert order["delivery"] is None  # never read from the provider yet
    assert order["order_id"] == "312891245"
    assert order["state"] == "scheduled"
    assert order["send_at"] == "2030-01-01T07:00:00Z"
    assert order["label"] == "new year"
    assert order["reason"] == "registered"
    assert order["cancel_requested_at"] is None
    assert order["cancel_attempts"] == 0
    assert order["last_provider_code"] is None
    assert order["updated_at"].endswith("Z")
    assert list_json.json() == [order]

    assert "send at          2030-01-01 10:00 +03 (in " in status.out
    assert "state            scheduled" in status.out

    assert history_json.code == 0 and history.code == 0
    [event] = history_json.json()
    assert set(event) == {"at", "from_state", "to_state", "reason", "details"}
    assert event["from_state"] is None
    assert event["to_state"] == "scheduled"
    assert event["at"].endswith("Z")
    assert history.out.splitlines()[0].split() == ["AT", "FROM", "TO", "REASON", "DETAILS"]
    assert " +03  -     scheduled  registered" in history.out


def test_registering_again_is_harmless_but_not_with_another_time(work: Path, book: Ledger) -> None:
    book.register("7", datetime(2030, 1, 1, 7, 0, tzinfo=UTC))
    before = snapshot(book)
    same, other, past = run_all(
        work,
        ["register", "7", "--send-at", "2030-01-01T07:00Z"],
        ["register", "7", "--send-at", "2030-01-01T08:00Z"],
        ["register", "8", "--send-at", "2020-01-01T08:00Z"],
    )
    assert same.code == 0 and "7      scheduled" in same.out
    assert other.code == 2
    assert_one_error_line(other, "order 7 is already registered for 2030-01-01T07:00:00+00:00")
    assert past.code == 2
    assert_one_error_line(past, "order 8", "not in the future")
    assert snapshot(book) == before


def test_list_filters_by_state(work: Path, book: Ledger) -> None:
    book.register("1", datetime(2030, 1, 1, 7, 0, tzinfo=UTC))
    book.register("2", datetime(2030, 1, 1, 8, 0, tzinfo=UTC))
    book.request_cancel("2")
    scheduled, requested = run_all(
        work,
        ["list", "--state", "scheduled", "--json"],
        ["list", "--state", "cancel_requested"],
    )
    assert [o["order_id"] for o in scheduled.json()] == ["1"]
    assert [line.split()[:2] for line in requested.out.splitlines()] == [
        ["ORDER", "STATE"],
        ["2", "cancel_requested"],
    ]
    assert "2030-01-01 11:00 +03" in requested.out


# -- cancel ------------------------------------------------------------------------------------


def test_cancel_accepts_warns_and_refuses_and_reports_unknown_ids(work: Path, book: Ledger) -> None:
    now = book.now()
    book.register("far", now + timedelta(hours=2))
    book.register("near", now + timedelta(minutes=10))  # inside warn_before (15 min)
    book.register("late", now + timedelta(minutes=4))  # inside refuse_before (5 min)
    before = datetime.now(UTC)
    result = without_liveness_warning(run(work, "cancel", "far", "near", "late", "ghost"))
    after = datetime.now(UTC)
    assert result.code == 2, "an unknown id is an input error, and outranks a refusal"
    lines = result.out.splitlines()
    assert lines[0].split()[:2] == ["ORDER", "STATE"]
    assert [line.split()[:2] for line in lines[1:]] == [
        ["far", "cancel_requested"],
        ["near", "cancel_requested"],
        ["late", "cancel_refused"],
    ]
    # The command read its clock between `before` and `after`: its countdown is one of the
    # whole minutes left at those two readings (usually both 9), never another.
    send_at = book.get("near").send_at
    minutes = {int((send_at - t).total_seconds()) // 60 for t in (before, after)}
    assert result.err_lines[0] in {
        f"warning: order near dispatches in {m} min; the cancel may come too late"
        for m in range(min(minutes), max(minutes) + 1)
    }
    assert result.err_lines[1:] == [
        "smsledger: error: cancel of order late refused: inside the refuse margin: "
        + result.err_lines[1].split("refuse margin: ")[1],
        "smsledger: error: order ghost is not in the ledger",
    ]
    assert book.get("far").state is OrderState.CANCEL_REQUESTED
    assert book.get("late").state is OrderState.CANCEL_REFUSED

    again, refused = run_all(work, ["cancel", "far"], ["cancel", "late"])
    assert again.code == 0, "asking again for a cancel under way is fine"
    assert again.err == f"{NO_DAEMON_WARNING}\n", "nothing but: no daemon runs here"
    assert refused.code == 1
    assert_one_error_line(refused, "cancel of order late refused")


def test_cancel_wait_reports_orders_the_daemon_never_finished(work: Path, book: Ledger) -> None:
    book.register("a", book.now() + timedelta(hours=2))
    started = time.monotonic()
    result = without_liveness_warning(run(work, "cancel", "a", "--wait", "0.6"))
    assert 0.6 <= time.monotonic() - started < 10
    assert result.code == 1
    assert result.out.count("cancel_requested") == 2, "the state before and after the wait"
    assert_one_error_line(result, "order a is still cancel_requested after 0.6 s", "smsledger run")


def test_cancel_wait_exits_0_once_every_order_is_cancelled(work: Path, book: Ledger) -> None:
    book.register("a", book.now() + timedelta(hours=2))
    book.register("b", book.now() + timedelta(hours=3))
    with start(work, "cancel", "a", "b", "--wait", "30") as proc:
        try:
            deadline = time.monotonic() + 25
            pending = {"a", "b"}
            while pending and time.monotonic() < deadline:  # play the daemon
                for oid in list(pending):
                    if book.get(oid).state is OrderState.CANCEL_REQUESTED:
                        book.store.transition(
                            oid,
                            OrderState.CANCEL_REQUESTED,
                            OrderState.CANCELLED,
                            now=book.now(),
                            reason="verified in the test",
                        )
                        pending.discard(oid)
                time.sleep(0.05)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, err
    final = out.split("\n\n")[1].splitlines()
    assert [line.split()[:2] for line in final[1:]] == [["a", "cancelled"], ["b", "cancelled"]]


def test_cancel_wait_fails_fast_on_a_final_state_that_is_not_cancelled(
    work: Path, book: Ledger
) -> None:
    book.register("late", book.now() + timedelta(minutes=3))
    started = time.monotonic()
    result = run(work, "cancel", "late", "--wait", "30")
    assert time.monotonic() - started < 10, "a refused order is final: nothing to wait for"
    assert result.code == 1
    assert_one_error_line(result, "cancel of order late refused")


def test_cancel_of_an_order_that_ended_too_late_says_so_and_still_handles_the_others(
    work: Path, book: Ledger
) -> None:
    """`request_cancel` raises CancelNotPossible there; the command prints it and goes on."""
    book.register("gone", book.now() + timedelta(hours=2))
    book.register("next", book.now() + timedelta(hours=2))
    book.request_cancel("gone")
    book.store.transition(
        "gone",
        OrderState.CANCEL_REQUESTED,
        OrderState.TOO_LATE,
        now=book.now(),
        reason="provider reports sending in progress (113)",
    )
    result = without_liveness_warning(run(work, "cancel", "gone", "next"))
    assert result.code == 1
    assert [line.split()[:2] for line in result.out.splitlines()[1:]] == [
        ["gone", "too_late"],
        ["next", "cancel_requested"],
    ]
    assert_one_error_line(result, "order gone cannot be cancelled", "too_late")
    assert book.get("next").state is OrderState.CANCEL_REQUESTED


# -- bad input, config and ledger errors -------------------------------------------------------


def test_bad_input_is_one_line_exit_2_and_changes_nothing(work: Path, book: Ledger) -> None:
    """A sample of each kind; tests/unit/test_cli_main.py runs the rest in-process."""
    book.register("1", datetime(2030, 1, 1, 7, 0, tzinfo=UTC))
    before = snapshot(book)
    (work / "broken.toml").write_text("timezone = \n")
    (work / "typo.toml").write_text("[windows]\nrefuse_befor_seconds = 60\n")
    cases: list[tuple[list[str], tuple[str, ...]]] = [
        (["register", "2", "--send-at", "tomorrow"], ("--send-at", "'tomorrow'", "ISO 8601")),
        (["register", "2", "--send-at", "2030-01-01"], ("'2030-01-01'", "without a time")),
        (["list", "--state", "bogus"], ("'bogus'", "scheduled, cancel_requested")),
        (["status", "404"], ("order 404 is not in the ledger",)),
        (["logs", "--since", "lately"], ("--since", "'lately'")),
        (["--config", "missing.toml", "list"], ("missing.toml does not exist",)),
        (["--config", "broken.toml", "list"], ("broken.toml is not valid TOML",)),
        (["--config", "typo.toml", "list"], ("windows.refuse_befor_seconds",)),
        (
            ["register", "2", "--send-at", "2030-01-01T10:00", "--label", "ok\n1  cancelled"],
            ("control character U+000A",),
        ),
        (
            ["register", "2", "--send-at", "2030-01-01T10:00", "--label", "\x1b[31mred"],
            ("control character U+001B",),
        ),
        (
            ["send", "--sender", "ACME", "--to", "905551112233", "--text", "hi",
             "--at", at(timedelta(hours=1))],
            ("no API credentials", "ILETIMERKEZI_API_KEY"),
        ),
    ]  # fmt: skip
    results = run_all(work, *(args for args, _ in cases))
    for (args, needles), result in zip(cases, results, strict=True):
        assert result.code == 2, (args, result.err)
        assert result.out == "", args
        assert_one_error_line(result, *needles)
    assert snapshot(book) == before


def test_a_naive_time_is_read_in_the_configured_zone_and_dst_gaps_are_refused(
    work: Path,
) -> None:
    (work / "smsledger.toml").write_text(CONFIG.format(zone="Europe/Berlin"))
    winter, summer, gap = run_all(
        work,
        ["register", "w", "--send-at", "2030-01-15T10:00"],
        ["register", "s", "--send-at", "2030-07-15T10:00"],
        ["register", "g", "--send-at", "2030-03-31T02:30"],
    )
    assert winter.code == 0 and "2030-01-15 10:00 +01" in winter.out
    assert summer.code == 0 and "2030-07-15 10:00 +02" in summer.out
    assert gap.code == 2
    assert_one_error_line(gap, "2030-03-31T02:30 does not exist in Europe/Berlin")
    listed = {o["order_id"]: o["send_at"] for o in run(work, "list", "--json").json()}
    assert listed == {"w": "2030-01-15T09:00:00Z", "s": "2030-07-15T08:00:00Z"}


def test_an_unreachable_ledger_is_exit_1_and_debug_adds_the_traceback(work: Path) -> None:
    (work / "smsledger.toml").write_text(
        CONFIG.replace("sqlite:///ledger.db", "sqlite:////nonexistent/dir/x.db").format(zone="UTC")
    )
    plain, debug = run_all(work, ["list"], ["--debug", "list"])
    assert plain.code == 1
    assert_one_error_line(plain, "no ledger exists at /nonexistent/dir/x.db")
    assert debug.code == 1
    assert "Traceback (most recent call last)" in debug.err
    assert debug.err_lines[-1] == plain.err_lines[0]


def test_config_comes_from_the_environment_when_no_flag_names_one(tmp_path: Path) -> None:
    (tmp_path / "elsewhere.toml").write_text(CONFIG.format(zone="UTC"))
    result = run(
        tmp_path,
        "register",
        "9",
        "--send-at",
        "2030-01-01T10:00",
        env=clean_env(SMSLEDGER_CONFIG=str(tmp_path / "elsewhere.toml")),
    )
    assert result.code == 0, result.err
    assert "2030-01-01 10:00 +00" in result.out
    assert (tmp_path / "ledger.db").exists()


# -- logs --------------------------------------------------------------------------------------


def _line(**fields: object) -> str:
    return json.dumps(fields, ensure_ascii=False)


LOG_LINES = [
    _line(
        event="order_state_changed",
        order_id="1",
        to_state="scheduled",
        level="info",
        timestamp="2025-11-28T10:00:00.000001Z",
    ),
    _line(
        event="provider_call",
        endpoint="get-report",
        code=456,
        level="debug",
        timestamp="2025-11-28T10:01:00Z",
    ),
    "this line is not JSON",
    _line(
        event="cancel_close_to_dispatch",
        order_id="1",
        seconds_left=500.5,
        level="warning",
        timestamp="2025-11-28T10:02:00Z",
    ),
    _line(
        event="order_state_changed",
        order_id="2",
        to_state="needs_attention",
        reason="could not verify",
        level="error",
        timestamp="2025-11-28T10:03:00Z",
    ),
    "",
]


@pytest.fixture
def logged(work: Path) -> Path:
    (work / "log.jsonl").write_text("\n".join(LOG_LINES))
    return work


def test_logs_shows_aligned_local_lines_and_counts_what_is_not_json(logged: Path) -> None:
    result = run(logged, "logs")
    assert result.code == 0
    assert result.out.splitlines() == [
        "2025-11-28 13:00:00 +03  info     order_state_changed       1  to_state=scheduled",
        "2025-11-28 13:01:00 +03  debug    provider_call             -  endpoint=get-report"
        " code=456",
        "2025-11-28 13:02:00 +03  warning  cancel_close_to_dispatch  1  seconds_left=500.5",
        "2025-11-28 13:03:00 +03  error    order_state_changed       2  to_state=needs_attention"
        ' reason="could not verify"',
    ]
    assert result.err == "smsledger: skipped 1 line(s) of " + str(logged / "log.jsonl") + (
        " that are not JSON\n"
    )


def test_logs_filters_alone_and_combined(logged: Path) -> None:
    def picked(result: Result) -> list[str]:
        assert result.code == 0, result.err
        return [json.loads(line)["timestamp"][11:16] for line in result.out.splitlines()]

    results = run_all(
        logged,
        ["logs", "--json"],
        ["logs", "--json", "--order", "1"],
        ["logs", "--json", "--event", "order_state_changed"],
        ["logs", "--json", "--level", "warning"],
        ["logs", "--json", "--since", "2025-11-28T13:02"],  # Istanbul time, naive
        ["logs", "--json", "--since", "1d"],  # the lines are older than a day
        ["logs", "--json", "--order", "1", "--level", "warning", "--since", "2025-11-28T10:01Z"],
    )
    assert [picked(r) for r in results] == [
        ["10:00", "10:01", "10:02", "10:03"],
        ["10:00", "10:02"],
        ["10:00", "10:03"],
        ["10:02", "10:03"],
        ["10:02", "10:03"],
        [],
        ["10:02"],
    ]
    # --json passes the lines through byte for byte.
    assert results[0].out.splitlines() == [line for line in LOG_LINES if line.startswith("{")]


def test_logs_order_shows_a_bulk_registration_from_the_ledger(work: Path, book: Ledger) -> None:
    send_at = datetime.now(UTC).replace(microsecond=0) + timedelta(days=2)
    book.register_many([("501", send_at), ("502", send_at)], label="spring")
    assert run(work, "cancel", "501").code == 0  # the command logs this change to log.jsonl

    result = run(work, "logs", "--json", "--order", "501")

    assert result.code == 0, result.err
    records = [json.loads(line) for line in result.out.splitlines()]
    assert [(r["event"], r["from_state"], r["to_state"]) for r in records] == [
        ("order_state_changed", None, "scheduled"),
        ("order_state_changed", "scheduled", "cancel_requested"),
    ]
    assert records[0]["source"] == "ledger"
    assert records[0]["reason"] == "registered"


def test_logs_follow_prints_new_lines_survives_rotation_and_stops_on_ctrl_c(logged: Path) -> None:
    log = logged / "log.jsonl"
    lines: list[str] = []
    with start(logged, "logs", "--follow", "--json", "--level", "warning") as proc:
        stdout = proc.stdout
        assert stdout is not None
        thread = threading.Thread(
            target=lambda: lines.extend(iter(stdout.readline, "")), daemon=True
        )
        thread.start()

        def wait_for(count: int, seconds: float = 10) -> None:
            deadline = time.monotonic() + seconds
            while len(lines) < count and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(lines) == count, lines

        try:
            wait_for(2, seconds=30)  # the two old lines at warning or above, after start-up
            new = '{"event": "x", "level": "error", "timestamp": "2025-11-28T11:00:00Z"}'
            quiet = '{"event": "y", "level": "info", "timestamp": "2025-11-28T11:00:01Z"}'
            with log.open("a") as f:
                f.write(f"{quiet}\n{new}\n")
            wait_for(3)
            log.replace(logged / "log.jsonl.1")  # rotation: a new file takes the name
            rotated = new.replace('"x"', '"after_rotation"')
            log.write_text(rotated + "\n")
            wait_for(4)
            assert lines[2].rstrip("\n") == new
            assert lines[3].rstrip("\n") == rotated
            proc.send_signal(signal.SIGINT)  # Ctrl-C: the way a person stops following
            assert proc.wait(timeout=10) == 130
            assert proc.stderr is not None
            assert proc.stderr.read() == (  # no traceback; the count of skipped lines
                f"smsledger: skipped 1 line(s) of {log} that are not JSON\n"
            )
        finally:
            if proc.poll() is None:
                proc.kill()
            thread.join(timeout=5)


# -- the provider: check and send against the sandbox ------------------------------------------


@pytest.fixture
def provider(work: Path, sandbox: Any) -> Path:
    """The work folder, its config pointing at the sandbox with the sandbox's credentials."""
    (work / "smsledger.toml").write_text(
        CONFIG.format(zone="Europe/Istanbul")
        + f'[api]\nbase_url = "{sandbox.url}"\nkey = "sandbox-key"\nhash = "sandbox-hash"\n'
    )
    return work


def test_check_reports_config_ledger_and_balance(provider: Path, book: Ledger) -> None:
    ok = run(provider, "check")
    rejected = run(provider, "check", env=clean_env(ILETIMERKEZI_API_KEY="wrong"))
    assert ok.code == 0, ok.err
    no_daemon = f"{NO_DAEMON} (none seen)"
    assert ok.err == f"warning: daemons: {no_daemon}\n", "a warning, not a failure"
    *lines, clock = ok.out.splitlines()
    assert lines == [
        f"config    ok    {provider / 'smsledger.toml'} (from the first found of the search path)",
        f"ledger    ok    sqlite:///{provider / 'ledger.db'}",
        f"daemons   WARN  {no_daemon}",
        f"provider  ok    {ok.out.split('provider  ok    ')[1].split()[0]} "
        "balance 1000.00 / 5000 SMS",
    ]
    assert clock.startswith("clock     ok    the provider's clock is "), clock
    assert rejected.code == 1
    assert "provider  FAIL  credentials rejected" in rejected.out
    assert rejected.err_lines[0] == f"warning: daemons: {no_daemon}"
    rejected = Result(rejected.code, rejected.out, rejected.err.split("\n", 1)[1])
    assert_one_error_line(rejected, "provider: credentials rejected", "401")


def test_send_prints_the_id_registers_and_logs_it(provider: Path, sandbox: Any) -> None:
    when = at(timedelta(hours=2))
    result = run(
        provider,
        "send",
        "--sender", "ACME",
        "--to", "905551112233, 905551112234",
        "--text", "Merhaba",
        "--at", when,
        "--label", "welcome",
    )  # fmt: skip
    assert result.code == 0, result.err
    order_id = result.out.strip()
    assert result.out == f"{order_id}\n", "only the id on stdout, for $(smsledger send ...)"
    assert result.err.startswith(f"registered order {order_id}: sends in 2 h")
    truth = sandbox.truth()["orders"][order_id]
    sent_at = datetime.fromisoformat(when.replace("Z", "+00:00"))
    assert datetime.fromisoformat(truth["send_at"]) == sent_at

    status, logs = run_all(
        provider,
        ["status", order_id, "--json"],
        ["logs", "--json", "--event", "send_accepted"],
    )
    order = status.json()
    assert (order["state"], order["send_at"], order["label"]) == (
        "scheduled",
        when[:-1] + ":00Z",
        "welcome",
    )
    [line] = logs.out.splitlines()
    logged = json.loads(line)
    assert (logged["order_id"], logged["recipients"], logged["level"]) == (order_id, 2, "info")
    assert "sandbox-key" not in (provider / "log.jsonl").read_text()


def test_a_sent_order_the_ledger_cannot_record_is_still_printed_with_a_fix(
    provider: Path, sandbox: Any, book: Ledger
) -> None:
    sandbox_module = pytest.importorskip("scheduler.provider.sandbox")
    next_id = str(sandbox_module.FIRST_ORDER_ID)
    book.register(next_id, datetime(2030, 1, 1, 7, 0, tzinfo=UTC))  # the id, for another time
    when = at(timedelta(hours=1))
    result = run(
        provider, "send", "--sender", "ACME", "--to", "905551112233", "--text", "x", "--at", when
    )
    assert result.code == 1
    assert result.out == f"{next_id}\n"
    assert_one_error_line(
        result,
        f"order {next_id} was accepted by the provider but is NOT in the ledger",
        f"smsledger --config {provider / 'smsledger.toml'} register {next_id} --send-at ",
    )
    logged = [json.loads(x) for x in (provider / "log.jsonl").read_text().splitlines()]
    assert [e["event"] for e in logged if e.get("order_id") == next_id][-2:] == [
        "send_accepted",
        "send_not_recorded",
    ]


def test_a_provider_refusal_is_exit_1_in_one_line(provider: Path, book: Ledger) -> None:
    result = run(
        provider,
        "send",
        "--sender", "MUCH-TOO-LONG-SENDER",
        "--to", "905551112233",
        "--text", "x",
        "--at", at(timedelta(hours=1)),
    )  # fmt: skip
    assert result.code == 1
    assert result.out == ""
    assert_one_error_line(result, "send-sms answered 460")
    assert book.orders() == []


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_log_neither_fails_a_cancel_nor_stops_the_daemon(
    provider: Path, sandbox: Any, book: Ledger
) -> None:
    config = provider / "smsledger.toml"
    config.write_text(config.read_text().replace('path = "log.jsonl"', 'path = "/dev/full"'))
    send_at = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    book.register("700001", send_at)
    sandbox.add_order("700001", send_at)
    notice = "smsledger: cannot write the log /dev/full: No space left on device; carrying on"

    cancel = without_liveness_warning(run(provider, "cancel", "700001"))
    assert cancel.code == 0, cancel.err
    assert cancel.err.startswith(notice) and len(cancel.err_lines) == 1, cancel.err
    assert book.get("700001").state is OrderState.CANCEL_REQUESTED

    daemon = run(provider, "run", "--once")
    assert daemon.code == 0, daemon.err
    assert daemon.err.startswith(notice) and len(daemon.err_lines) == 1, daemon.err
    assert book.get("700001").state is OrderState.CANCELLED
    assert sandbox.truth()["orders"]["700001"]["cancels_accepted"] == 1


def test_secrets_in_the_ledger_urls_query_are_neither_printed_nor_logged(
    provider: Path, sandbox: Any
) -> None:
    config = provider / "smsledger.toml"
    secret_query = "?password=pw-q-5521&api_key=ak-q-7734&sslmode=require"
    config.write_text(
        config.read_text().replace('"sqlite:///ledger.db"', f'"sqlite:///ledger.db{secret_query}"')
    )

    migrate = run(provider, "migrate")
    check = run(provider, "check")
    daemon = run(provider, "run", "--once")

    assert migrate.code == 0, migrate.err
    assert check.code == 0, check.err
    shown = f"sqlite:///{provider / 'ledger.db'}?password=***&api_key=***&sslmode=require"
    assert f"ledger    ok    {shown}" in check.out
    assert daemon.code == 0, daemon.err
    log = (provider / "log.jsonl").read_text()
    [started] = [json.loads(x) for x in log.splitlines() if '"daemon_started"' in x]
    assert started["config"]["ledger"]["url"] == shown
    assert f"ledger {shown} migrated" in migrate.out
    for text in (migrate.out, migrate.err, check.out, check.err, daemon.out, daemon.err, log):
        assert "pw-q-5521" not in text
        assert "ak-q-7734" not in text


def test_nan_or_infinity_in_a_numeric_config_key_is_exit_2_naming_the_key(work: Path) -> None:
    config = work / "smsledger.toml"
    config.write_text(config.read_text() + "[scheduler]\npoll_seconds = nan\n")

    result = run(work, "check")

    assert result.code == 2
    assert_one_error_line(result, "scheduler.poll_seconds", "must be a finite number, got nan")


def test_control_characters_an_older_version_stored_are_printed_escaped(
    work: Path, book: Ledger
) -> None:
    book.register("41", datetime(2030, 1, 1, 7, 0, tzinfo=UTC), "x")
    hostile = "promo\n42        cancelled\x1b[2J\u202e"
    # As a version without the check wrote it.
    with contextlib.closing(sqlite3.connect(work / "ledger.db")) as db, db:
        db.execute(
            f"UPDATE {ORDERS_TABLE} SET label = ?, reason = ?", (hostile, "said \x1b]0;t\x07")
        )
        db.execute(f"UPDATE {EVENTS_TABLE} SET reason = ?", ("bad\nreason",))
    shown = "promo\\n42        cancelled\\x1b[2J\\u202e"

    listed, status, history, as_json = run_all(
        work, ["list"], ["status", "41"], ["history", "41"], ["list", "--json"]
    )

    for result in (listed, status, history, as_json):
        assert result.code == 0, result.err
        assert "\x1b" not in result.out and "\u202e" not in result.out
    assert len(listed.out.splitlines()) == 2
    assert shown in listed.out and shown in status.out
    assert "said \\x1b]0;t\\x07" in status.out
    assert len(history.out.splitlines()) == 2 and "bad\\nreason" in history.out
    assert as_json.json()[0]["label"] == hostile


# -- the ledger file: missing, empty, damaged ----------------------------------------------------


def test_commands_that_only_read_never_create_a_ledger(provider: Path) -> None:
    path = provider / "ledger.db"
    reads = [["status", "1"], ["list"], ["history", "1"], ["cancel", "1"], ["check"]]

    results = run_all(provider, *reads)
    path.touch()  # an empty file is no ledger either, and stays empty
    empty = run(provider, "list", "--json")

    for args, result in zip(reads, results, strict=True):
        assert result.code == 1, (args, result.err)
        assert result.err_lines[0] == (
            f"smsledger: error: {'ledger: ' if args == ['check'] else ''}no ledger exists at "
            f"{path} (no such file); check ledger.url, or create one with 'smsledger migrate'"
        ), args
        assert len(result.err_lines) == 1 and "Traceback" not in result.err
    assert "ledger    FAIL  no ledger exists at" in results[-1].out
    assert empty.code == 1
    assert_one_error_line(empty, f"no ledger exists at {path} (the file is empty)")
    assert path.stat().st_size == 0
    assert sorted(p.name for p in provider.iterdir() if p.name.startswith("ledger")) == [
        "ledger.db"
    ]
    created = run(provider, "register", "1", "--send-at", "2030-01-01T10:00")
    assert created.code == 0, created.err
    assert run(provider, "status", "1").code == 0


@pytest.mark.parametrize(
    "content", [os.urandom(8192), b"not a database\n" * 100], ids=["random-bytes", "text"]
)
def test_a_damaged_ledger_file_is_one_clear_line_and_exit_1(provider: Path, content: bytes) -> None:
    (provider / "ledger.db").write_bytes(content)
    commands = [["status", "1"], ["list"], ["check"], ["run", "--once"]]

    results = run_all(provider, *commands)

    for args, result in zip(commands, results, strict=True):
        assert result.code == 1, (args, result.err)
        assert len(result.err_lines) == 1 and "Traceback" not in result.err, (args, result.err)
        assert f"ledger sqlite:///{provider / 'ledger.db'} is damaged or not a database" in (
            result.err
        ), args
        assert "internal error" not in result.err
    assert (provider / "ledger.db").read_bytes() == content
