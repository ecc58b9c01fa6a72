"""Campaigns through the real `smsledger` command: `cancel --label`, `cancel --json`, dry runs.

Orders a test only needs to exist are registered through the `Ledger` library (fast); the command
is run for what the test is about.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import pty
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from helpers import CONFIG, SMSLEDGER, clean_env, needs_smsledger, run_command

from ledger import Ledger, OrderState
from ledger.heartbeats import NO_DAEMON

pytestmark = needs_smsledger


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


def test_cancel_json_reports_each_id_and_exits_with_the_worst_outcome(
    work: Path, book: Ledger
) -> None:
    now = book.now()
    book.register("far", now + timedelta(hours=2))
    book.register("near", now + timedelta(minutes=10))
    book.register("late", now + timedelta(minutes=4))
    book.register("done", now + timedelta(hours=2))
    book.request_cancel("done")

    mixed = run_command(work, "cancel", "far", "near", "late", "done", "ghost", "--json")
    refused = run_command(work, "cancel", "far", "late", "--json")
    fine = run_command(work, "cancel", "far", "done", "--json")

    assert mixed.code == 2, "an unknown id is an input error and outranks a refusal"
    body = mixed.json()
    counts = ("requested", "warned", "refused", "already", "final", "unknown")
    assert {k: body[k] for k in counts} == {
        "requested": 1, "warned": 1, "refused": 1, "already": 1, "final": 0, "unknown": 1,
    }  # fmt: skip
    assert body["orders"] == [
        {"order_id": "far", "state": "cancel_requested", "outcome": "requested"},
        {"order_id": "near", "state": "cancel_requested", "outcome": "warned"},
        {"order_id": "late", "state": "cancel_refused", "outcome": "refused"},
        {"order_id": "done", "state": "cancel_requested", "outcome": "already"},
        {"order_id": "ghost", "state": None, "outcome": "unknown"},
    ]
    assert body["earliest_refused_send_at"] is not None
    assert mixed.err_lines == [f"warning: {NO_DAEMON}"], "stdout is the whole answer"
    assert (refused.code, refused.json()["final"], refused.json()["already"]) == (1, 1, 1)
    assert (fine.code, fine.json()["already"]) == (0, 2)


def test_cancel_by_label_cancels_the_campaign_and_counts_each_outcome(
    work: Path, book: Ledger
) -> None:
    now = book.now()
    book.register_many(
        [(f"s-{n}", now + timedelta(hours=2), "spring") for n in range(1200)]
        + [(f"w-{n}", now + timedelta(minutes=10), "spring") for n in range(30)]
        + [(f"r-{n}", now + timedelta(minutes=4), "spring") for n in range(20)]
        + [(f"a-{n}", now + timedelta(hours=2), "autumn") for n in range(10)]
    )

    dry = run_command(work, "cancel", "--label", "spring", "--dry-run")
    assert dry.code == 1, "refusals would happen"
    assert dry.out.startswith("dry run, nothing written: 1250 order(s) with label spring")
    assert {o.state for o in book.orders()} == {OrderState.SCHEDULED}, "a dry run writes nothing"

    done = run_command(work, "cancel", "--label", "spring", "--json")
    body = done.json()
    assert done.code == 1
    assert (body["requested"], body["warned"], body["refused"], body["dry_run"]) == (
        1200, 30, 20, False,
    )  # fmt: skip
    assert len(body["orders"]) == 1250
    states = {o.order_id: o.state for o in book.orders()}
    assert all(states[f"s-{n}"] is OrderState.CANCEL_REQUESTED for n in range(1200))
    assert all(states[f"r-{n}"] is OrderState.CANCEL_REFUSED for n in range(20))
    assert all(states[f"a-{n}"] is OrderState.SCHEDULED for n in range(10))

    again = run_command(work, "cancel", "--label", "spring")
    assert again.code == 1, "the refused orders of the campaign will still go out"
    assert "already    1230" in again.out
    assert "final      20" in again.out


def test_a_campaign_cancel_logs_a_line_per_batch_and_logs_order_shows_every_change(
    work: Path, book: Ledger
) -> None:
    """Refusals are loud and keep a line each; the requested ones share one line per batch, and
    ``logs --order`` shows an order's every change, from the ledger where the log has no line."""
    now = book.now()
    book.register_many(
        [(f"s-{n}", now + timedelta(hours=2), "spring") for n in range(30)]
        + [(f"r-{n}", now + timedelta(minutes=4), "spring") for n in range(5)]
    )

    assert run_command(work, "cancel", "--label", "spring").code == 1
    logged = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    shown = run_command(work, "logs", "--json", "--order", "s-3")
    refused = run_command(work, "logs", "--json", "--order", "r-1")

    batch = [r for r in logged if r["event"] == "orders_state_changed"]
    assert [(r["count"], r["to_state"], r["first_order_id"]) for r in batch] == [
        (30, "cancel_requested", "s-0")
    ]
    per_order = [r for r in logged if r["event"] == "order_state_changed"]
    assert sorted(r["order_id"] for r in per_order) == [f"r-{n}" for n in range(5)]
    assert {r["level"] for r in per_order} == {"warning"}
    story = [json.loads(line) for line in shown.out.splitlines()]
    assert [(r["to_state"], r.get("source")) for r in story] == [
        ("scheduled", "ledger"),
        ("cancel_requested", "ledger"),
    ]
    assert story[1]["details"]["seconds_left"] > 7000
    assert [
        (r["to_state"], r.get("source")) for r in map(json.loads, refused.out.splitlines())
    ] == [("scheduled", "ledger"), ("cancel_refused", None)], "the log's own line, not twice"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["cancel"], "give ORDER_ID... or --label LABEL"),
        (["cancel", "a", "--label", "spring"], "give ORDER_ID... or --label LABEL"),
        (["cancel", "--label", "bad\u202elabel"], "--label: label contains the control"),
        (["cancel", "--lab", "spring"], "unrecognized arguments"),
    ],
)
def test_cancel_needs_ids_or_a_label(
    work: Path, book: Ledger, args: list[str], needle: str
) -> None:
    book.register("a", book.now() + timedelta(hours=2), label="spring")
    result = run_command(work, *args)
    assert result.code == 2
    assert result.err.startswith("smsledger: error: ") and needle in result.err
    assert book.get("a").state is OrderState.SCHEDULED


# -- register --from ---------------------------------------------------------------------------


def test_register_from_csv_and_from_json_lines_on_stdin(work: Path, book: Ledger) -> None:
    (work / "spring.csv").write_text(
        "order_id,send_at,label\n1,2030-01-01T10:00,spring\n2,2030-01-01T07:00Z,\n"
    )
    jsonl = '{"order_id": "3", "send_at": "2030-01-01T10:00", "label": "autumn"}\n'

    csv_run = run_command(work, "register", "--from", "spring.csv", "--label", "fallback")
    json_run = run_command(work, "register", "--from", "-", stdin=jsonl)

    assert (csv_run.code, json_run.code) == (0, 0), csv_run.err + json_run.err
    assert csv_run.out == "spring.csv: 2 new order(s) registered, 0 already registered\n"
    assert json_run.out == "stdin: 1 new order(s) registered, 0 already registered\n"
    assert [(o.order_id, o.send_at.isoformat(), o.label) for o in book.orders()] == [
        ("1", "2030-01-01T07:00:00+00:00", "spring"),
        ("2", "2030-01-01T07:00:00+00:00", "fallback"),
        ("3", "2030-01-01T07:00:00+00:00", "autumn"),
    ]


def test_any_bad_line_registers_nothing_and_lists_at_most_20(work: Path, book: Ledger) -> None:
    book.register("taken", datetime(2029, 1, 1, tzinfo=UTC))
    lines = ["order_id,send_at", "taken,2030-01-01T10:00"]
    lines += [f"ok-{n},2030-01-01T10:00" for n in range(10)]
    lines += [f"bad-{n},tomorrow" for n in range(24)]
    (work / "c.csv").write_text("\n".join(lines) + "\n")

    result = run_command(work, "register", "--from", "c.csv")

    assert result.code == 2
    err = result.err_lines
    assert err[0] == (
        "smsledger: error: c.csv: 25 bad line(s) of 35; nothing was registered "
        "(--skip-invalid registers the good lines)"
    )
    assert err[1].startswith("  line 2: order taken is already registered for 2029-01-01")
    assert err[2].startswith("  line 13: 'tomorrow' is not an ISO 8601 date and time")
    assert len(err) == 1 + 20 + 1
    assert err[-1] == "  ... and 5 more bad line(s)"
    assert [o.order_id for o in book.orders()] == ["taken"], "nothing was written"

    skipped = run_command(work, "register", "--from", "c.csv", "--skip-invalid")
    assert skipped.code == 0
    assert skipped.out.startswith("c.csv: 10 new order(s) registered, 0 already registered, 25 bad")
    assert "line 2: order taken is already registered for" in skipped.err
    assert len(book.orders()) == 11


def test_a_100000_line_import_is_registered_once_and_again_is_all_already(
    work: Path, book: Ledger
) -> None:
    body = "".join(
        f'{{"order_id": "m-{n}", "send_at": "2030-01-01T10:00", "label": "big"}}\n'
        for n in range(100_000)
    )
    (work / "big.jsonl").write_text(body)

    first = run_command(work, "register", "--from", "big.jsonl", timeout=600)
    again = run_command(work, "register", "--from", "-", stdin=body, timeout=600)

    assert first.code == 0, first.err
    assert first.out == "big.jsonl: 100000 new order(s) registered, 0 already registered\n"
    assert "\r" not in first.out + first.err, "no progress bar when stdout is not a terminal"
    assert again.out == "stdin: 0 new order(s) registered, 100000 already registered\n"
    with book.store.read() as conn:
        count = conn.exec_driver_sql("SELECT count(*) FROM smsledger_orders").scalar_one()
    assert count == 100_000


def test_a_big_import_shows_a_progress_bar_on_a_terminal(work: Path, book: Ledger) -> None:
    rows = "".join(f"t-{n},2030-01-01T10:00\n" for n in range(6000))
    (work / "t.csv").write_text("order_id,send_at\n" + rows)
    assert SMSLEDGER is not None
    main, child = pty.openpty()
    with subprocess.Popen(
        [SMSLEDGER, "register", "--from", "t.csv"],
        cwd=work,
        env=clean_env(),
        stdout=child,
        stderr=subprocess.PIPE,
    ) as proc:
        os.close(child)
        shown = b""
        with contextlib.suppress(OSError):  # EIO once the command has exited
            while chunk := os.read(main, 4096):
                shown += chunk
        proc.wait(timeout=120)
    os.close(main)
    assert proc.returncode == 0
    text = shown.decode()
    assert "registering from t.csv [" in text and "6000/6000" in text
    assert text.rstrip().endswith("t.csv: 6000 new order(s) registered, 0 already registered")


# -- list and summary --------------------------------------------------------------------------


def test_list_filters_by_label_send_time_and_limit_and_summary_counts_labels(
    work: Path, book: Ledger
) -> None:
    book.register_many(
        [(f"s-{n}", datetime(2030, 1, 1, 7, n, tzinfo=UTC), "spring") for n in range(10)]
        + [(f"a-{n}", datetime(2030, 1, 1, 7, n, tzinfo=UTC), "autumn") for n in range(3)]
        + [("bare", datetime(2030, 1, 2, 7, 0, tzinfo=UTC))]
    )
    book.request_cancel("s-9")

    listed = run_command(
        work, "list", "--label", "spring", "--from", "2030-01-01T10:02",
        "--until", "2030-01-01T07:08Z", "--limit", "3", "--json",
    )  # fmt: skip
    summary = run_command(work, "summary", "--json")
    one = run_command(work, "summary", "--label", "autumn")
    none = run_command(work, "list", "--label", "winter")

    assert listed.code == 0, listed.err
    assert [o["order_id"] for o in listed.json()] == ["s-2", "s-3", "s-4"]
    body = summary.json()
    assert [(s["label"], s["next_send_at"], s["at_risk"]) for s in body] == [
        ("autumn", "2030-01-01T07:00:00Z", 0),
        ("spring", "2030-01-01T07:00:00Z", 0),
        (None, "2030-01-02T07:00:00Z", 0),
    ]
    assert body[1]["states"]["scheduled"] == 9 and body[1]["states"]["cancel_requested"] == 1
    assert set(body[0]["states"]) == {s.value for s in OrderState}
    assert one.out.splitlines()[0].split() == ["LABEL", "ORDERS", "NEXT", "SEND", "AT", "RISK",
                                               "STATES"]  # fmt: skip
    assert one.out.splitlines()[1].split()[:2] == ["autumn", "3"]
    assert one.out.rstrip().endswith("scheduled=3")
    assert none.out == "no orders with label winter\n"


# -- logs --------------------------------------------------------------------------------------

#: Runs the command given as arguments with stdout to /dev/null and prints its peak RSS in KiB:
#: a process of its own, so no other child of the test process is counted.
_PEAK_RSS = """
import resource, subprocess, sys
subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, check=True)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def _peak_rss_kib(work: Path, *args: str) -> int:
    assert SMSLEDGER is not None
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS, SMSLEDGER, *args],
        cwd=work,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return int(done.stdout.strip())


@pytest.mark.slow
def test_logs_reads_a_million_line_log_in_flat_memory(work: Path) -> None:
    line = '{"timestamp": "2026-11-28T10:00:00Z", "level": "info", "event": "tick"}\n'
    rare = '{"timestamp": "2026-11-28T10:00:01Z", "level": "warning", "event": "rare"}\n'
    (work / "log.jsonl").write_text(line * 10 + rare)
    small = _peak_rss_kib(work, "logs", "--event", "rare")
    with (work / "log.jsonl").open("w") as file:
        for _ in range(1000):
            file.write(line * 1000)
        file.write(rare)
    assert (work / "log.jsonl").stat().st_size > 70_000_000

    big = _peak_rss_kib(work, "logs", "--event", "rare")
    shown = run_command(work, "logs", "--event", "rare", timeout=600)

    assert shown.out.splitlines() == ["2026-11-28 13:00:01 +03  warning  rare  -"]
    assert big - small < 30 * 1024, f"{small} KiB for 11 lines, {big} KiB for a million"


def test_logs_include_rotated_reads_the_older_files_first(work: Path) -> None:
    def entry(n: int) -> bytes:
        text = f'{{"timestamp": "2026-11-28T10:00:0{n}Z", "level": "info", "event": "e{n}"}}\n'
        return text.encode()

    with gzip.open(work / "log.jsonl.2.gz", "wb") as file:
        file.write(entry(1) + entry(2))
    (work / "log.jsonl.1").write_bytes(entry(3))
    (work / "log.jsonl").write_bytes(entry(4))

    every = run_command(work, "logs", "--include-rotated", "--json")
    current = run_command(work, "logs", "--json")

    assert [json.loads(x)["event"] for x in every.out.splitlines()] == ["e1", "e2", "e3", "e4"]
    assert [json.loads(x)["event"] for x in current.out.splitlines()] == ["e4"]


# -- the command -------------------------------------------------------------------------------


def test_config_is_found_in_order_flag_env_here_user_then_defaults(tmp_path: Path) -> None:
    here, home, elsewhere = tmp_path / "here", tmp_path / "home", tmp_path / "elsewhere"
    for folder in (here, home / ".config" / "smsledger", elsewhere):
        folder.mkdir(parents=True)
        (folder / "smsledger.toml").write_text('timezone = "UTC"\n')
    flag = elsewhere / "flag.toml"
    flag.write_text('timezone = "UTC"\n')
    env = clean_env(HOME=str(home))
    env.pop("XDG_CONFIG_HOME", None)

    def used(cwd: Path, *args: str, **extra: str) -> str:
        result = run_command(cwd, *args, "check", env={**env, **extra})
        return result.out.splitlines()[0].split(maxsplit=2)[2]

    env_file = str(elsewhere / "smsledger.toml")
    user_file = home / ".config" / "smsledger" / "smsledger.toml"
    assert used(here, "--config", str(flag), SMSLEDGER_CONFIG=env_file) == f"{flag} (from --config)"
    assert used(here, SMSLEDGER_CONFIG=env_file) == f"{env_file} (from $SMSLEDGER_CONFIG)"
    assert used(here).startswith(f"{here / 'smsledger.toml'} (from the first found")
    assert used(tmp_path).startswith(f"{user_file} (from the first found")
    user_file.unlink()
    assert used(tmp_path).startswith("defaults (no file: none of smsledger.toml, ")


def test_cancel_wait_shows_live_progress_only_on_a_terminal(work: Path, book: Ledger) -> None:
    book.register("a", book.now() + timedelta(hours=2))
    book.register("b", book.now() + timedelta(hours=2))
    assert SMSLEDGER is not None
    main, child = pty.openpty()
    with subprocess.Popen(
        [SMSLEDGER, "cancel", "a", "b", "--wait", "1"],
        cwd=work,
        env=clean_env(),
        stdout=child,
        stderr=subprocess.PIPE,
    ) as proc:
        os.close(child)
        shown = b""
        with contextlib.suppress(OSError):
            while chunk := os.read(main, 4096):
                shown += chunk
        proc.wait(timeout=60)
    os.close(main)
    piped = run_command(work, "cancel", "a", "b", "--wait", "0.5")

    text = shown.decode()
    assert proc.returncode == 1, "not final when the wait ran out"
    assert "final [" in text and "0/2  cancel_requested=2" in text
    assert "\r" not in piped.out and "final [" not in piped.out
