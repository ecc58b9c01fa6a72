"""JSON-lines logging: every state change as one line, nothing configured on import, no secrets."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
from freezegun import freeze_time
from structlog.testing import capture_logs

import ledger.logsetup
from ledger import CancelRefused, Ledger, Order, OrderState, configure_logging
from ledger.config import LogConfig
from ledger.logsetup import REDACTED, SecretRedactor, log_write_failures

S = OrderState
KEY = "log-test-key-5f1c2a"
HASH = "log-test-hash-9b8e7d6c5b4a"
FROZEN = datetime(2031, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def log_to_buffer(*, level: str = "info", secrets: tuple[str, ...] = ()) -> io.StringIO:
    """Configure logging to an in-memory stream (``path = "-"``) and return the stream."""
    buffer = io.StringIO()
    configure_logging(LogConfig(path="-", level=level), secrets=secrets, stream=buffer)
    return buffer


def buffered_lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


# -- state changes -----------------------------------------------------------------------------


def test_every_state_change_is_one_json_line_with_order_states_reason_utc_timestamp_and_level(
    tmp_path: Path, ledger_factory: Callable[..., Ledger]
) -> None:
    log_file = tmp_path / "logs" / "smsledger.jsonl"
    configure_logging(LogConfig(path=str(log_file)))
    with freeze_time(FROZEN, ignore=["_pytest"]):
        ledger = ledger_factory()
        ledger.register("o1", send_at=FROZEN + timedelta(hours=1))
        ledger.request_cancel("o1")
        ledger.store.transition(
            "o1",
            S.CANCEL_REQUESTED,
            S.CANCELLING,
            now=ledger.now(),
            reason="sent",
            details={"code": 200},
        )

    lines = [e for e in read_lines(log_file) if e["event"] == "order_state_changed"]

    assert lines == [
        {
            "event": "order_state_changed",
            "order_id": "o1",
            "from_state": None,
            "to_state": "scheduled",
            "reason": "registered",
            "level": "info",
            "timestamp": "2031-03-04T05:06:07.123456Z",
        },
        {
            "event": "order_state_changed",
            "order_id": "o1",
            "from_state": "scheduled",
            "to_state": "cancel_requested",
            "reason": "cancel requested",
            "details": {"seconds_left": 3600.0},
            "level": "info",
            "timestamp": "2031-03-04T05:06:07.123456Z",
        },
        {
            "event": "order_state_changed",
            "order_id": "o1",
            "from_state": "cancel_requested",
            "to_state": "cancelling",
            "reason": "sent",
            "details": {"code": 200},
            "level": "info",
            "timestamp": "2031-03-04T05:06:07.123456Z",
        },
    ]
    assert datetime.fromisoformat(lines[0]["timestamp"]) == FROZEN


def test_the_timestamp_is_the_current_utc_time_in_iso_8601(
    tmp_path: Path, order_factory: Callable[..., Order]
) -> None:
    log_file = tmp_path / "smsledger.jsonl"
    configure_logging(LogConfig(path=str(log_file)))
    before = datetime.now(UTC)

    order_factory()

    after = datetime.now(UTC)
    stamps = [datetime.fromisoformat(e["timestamp"]) for e in read_lines(log_file)]
    assert stamps
    assert all(s.utcoffset() == timedelta(0) and before <= s <= after for s in stamps)


def test_a_refused_cancel_is_logged_as_a_state_change_to_cancel_refused_with_its_reason(
    tmp_ledger: Ledger, order_factory: Callable[..., Order]
) -> None:
    """At warning: `logs --level warning` finds every order a person should look at."""
    order = order_factory(send_at=tmp_ledger.now() + timedelta(minutes=2))

    with capture_logs() as logs, pytest.raises(CancelRefused) as refused:
        tmp_ledger.request_cancel(order.order_id)

    assert logs == [
        {
            "event": "order_state_changed",
            "log_level": "warning",
            "order_id": order.order_id,
            "from_state": "scheduled",
            "to_state": "cancel_refused",
            "reason": refused.value.order.reason,
            "details": {"seconds_left": pytest.approx(120, abs=1)},
        }
    ]


def test_a_close_cancel_logs_the_state_change_and_a_warning(
    tmp_ledger: Ledger, order_factory: Callable[..., Order]
) -> None:
    order = order_factory(send_at=tmp_ledger.now() + timedelta(minutes=10))

    with capture_logs() as logs:
        tmp_ledger.request_cancel(order.order_id)

    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("order_state_changed", "info"),
        ("cancel_close_to_dispatch", "warning"),
    ]
    assert logs[1]["seconds_left"] == pytest.approx(600, abs=1)


def test_each_order_moved_by_a_due_batch_gets_its_own_state_change_line(
    tmp_ledger: Ledger, order_factory: Callable[..., Order]
) -> None:
    for order_id in ("a", "b"):
        order_factory(order_id=order_id)
    later = tmp_ledger.now() + timedelta(hours=2)

    with capture_logs() as logs:
        tmp_ledger.store.transition_due(
            S.SCHEDULED, S.DISPATCHED, due_by=later, now=later, reason="send time passed"
        )

    assert [(e["event"], e["order_id"], e["from_state"], e["to_state"]) for e in logs] == [
        ("order_state_changed", "a", "scheduled", "dispatched"),
        ("order_state_changed", "b", "scheduled", "dispatched"),
    ]


def test_a_batch_registration_logs_one_summary_line_and_keeps_every_event_in_history(
    tmp_ledger: Ledger, order_factory: Callable[..., Order]
) -> None:
    known = order_factory(order_id="known")
    later = known.send_at + timedelta(hours=1)

    with capture_logs() as logs:
        tmp_ledger.register_many(
            [("known", known.send_at), ("a", later), ("b", known.send_at)], label="spring"
        )

    assert [e for e in logs if e["event"] == "order_state_changed"] == []
    (summary,) = [e for e in logs if e["event"] == "orders_registered"]
    assert summary["count"] == 2
    assert summary["already_known"] == 1
    assert summary["label"] == "spring"
    assert summary["first_send_at"] == known.send_at.astimezone(UTC).isoformat()
    assert summary["last_send_at"] == later.astimezone(UTC).isoformat()
    for order_id in ("a", "b"):
        assert [(e.from_state, e.to_state, e.reason) for e in tmp_ledger.history(order_id)] == [
            (None, S.SCHEDULED, "registered")
        ]


def test_a_batch_of_several_labels_names_them_all_in_its_summary_line(
    tmp_ledger: Ledger,
) -> None:
    send_at = tmp_ledger.now() + timedelta(days=1)

    with capture_logs() as logs:
        tmp_ledger.register_many([("a", send_at, "x"), ("b", send_at, None), ("c", send_at)])

    (summary,) = [e for e in logs if e["event"] == "orders_registered"]
    assert summary["label"] is None
    assert summary["labels"] == [None, "x"]


def test_calls_that_change_nothing_log_no_state_change(
    tmp_ledger: Ledger, ledger_factory: Callable[..., Ledger], order_factory: Callable[..., Order]
) -> None:
    order = order_factory()
    tmp_ledger.request_cancel(order.order_id)
    other = ledger_factory()

    with capture_logs() as logs:
        tmp_ledger.register(order.order_id, send_at=order.send_at)
        tmp_ledger.request_cancel(order.order_id)
        lost = other.store.transition(
            order.order_id, S.SCHEDULED, S.DISPATCHED, now=other.now(), reason="due"
        )

    assert not lost.applied
    assert [e for e in logs if e["event"] == "order_state_changed"] == []


# -- configuration -----------------------------------------------------------------------------


def test_importing_the_ledger_configures_no_logging_and_creates_no_file(tmp_path: Path) -> None:
    probe = (
        "import json, logging, structlog\n"
        "root = logging.getLogger()\n"
        "before = (list(root.handlers), root.level)\n"
        "import ledger, ledger.api, ledger.store, ledger.config, ledger.logsetup\n"
        "after = (list(root.handlers), root.level)\n"
        "print(json.dumps({'structlog_configured': structlog.is_configured(),\n"
        "                  'root_logger_unchanged': before == after}))\n"
    )

    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )

    assert json.loads(done.stdout) == {"structlog_configured": False, "root_logger_unchanged": True}
    assert done.stderr == ""
    assert list(tmp_path.iterdir()) == []


def test_lines_below_the_configured_level_are_not_written(tmp_path: Path) -> None:
    log_file = tmp_path / "smsledger.jsonl"
    configure_logging(LogConfig(path=str(log_file), level="warning"))
    log = structlog.get_logger("test")

    log.debug("not_written")
    log.info("not_written")
    log.warning("written", n=1)
    log.error("written", n=2)

    assert [(e["event"], e["level"], e["n"]) for e in read_lines(log_file)] == [
        ("written", "warning", 1),
        ("written", "error", 2),
    ]


def test_a_log_path_of_dash_writes_to_the_given_stream() -> None:
    buffer = log_to_buffer()

    structlog.get_logger("test").info("to_stream", n=1)

    assert [(e["event"], e["n"]) for e in buffered_lines(buffer)] == [("to_stream", 1)]


def test_configuring_the_same_file_twice_appends_to_it(tmp_path: Path) -> None:
    log_file = tmp_path / "smsledger.jsonl"
    log_file.write_text('{"event": "from_before"}\n', encoding="utf-8")

    configure_logging(LogConfig(path=str(log_file)))
    structlog.get_logger("test").info("first")
    configure_logging(LogConfig(path=str(log_file)))
    structlog.get_logger("test").info("second")

    assert [e["event"] for e in read_lines(log_file)] == ["from_before", "first", "second"]


def test_non_ascii_text_is_written_as_utf_8(tmp_path: Path) -> None:
    log_file = tmp_path / "smsledger.jsonl"
    configure_logging(LogConfig(path=str(log_file)))

    structlog.get_logger("test").info("provider_message", message="Üyelik bilgileri hatalı")

    assert "Üyelik bilgileri hatalı" in log_file.read_text(encoding="utf-8")


# -- a log that cannot be written ---------------------------------------------------------------

needs_dev_full = pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")


@pytest.fixture
def unreported(monkeypatch: pytest.MonkeyPatch) -> None:
    """The once-per-process stderr report of a failed log write has not happened yet."""
    monkeypatch.setattr(ledger.logsetup, "_reported", False)


@needs_dev_full
@pytest.mark.usefixtures("unreported")
def test_a_full_log_file_is_counted_reported_once_on_stderr_and_work_carries_on(
    capsys: pytest.CaptureFixture[str], ledger_factory: Callable[..., Ledger]
) -> None:
    before = log_write_failures()
    configure_logging(LogConfig(path="/dev/full"))

    structlog.get_logger("test").info("lost", n=1)
    structlog.get_logger("test").error("lost", n=2)
    book = ledger_factory()
    book.register("o1", send_at=book.now() + timedelta(hours=1))
    book.request_cancel("o1")

    assert book.get("o1").state is S.CANCEL_REQUESTED
    assert log_write_failures() - before >= 4  # two lines above, registered, cancel requested
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "smsledger: cannot write the log /dev/full: No space left on device; carrying on without it"
    ]


@pytest.mark.usefixtures("unreported")
def test_a_closed_log_stream_is_counted_and_does_not_raise(
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = log_write_failures()
    buffer = log_to_buffer()
    buffer.close()

    structlog.get_logger("test").info("lost")
    structlog.get_logger("test").info("lost again")

    assert log_write_failures() - before == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("smsledger: cannot write the log on stderr: ")


# -- secrets -----------------------------------------------------------------------------------


def test_configured_secrets_are_redacted_wherever_they_appear_in_a_line() -> None:
    buffer = log_to_buffer(secrets=(KEY, HASH))

    structlog.get_logger("test").info(
        "provider_call",
        body={"request": {"credentials": {"key": KEY, "hash": HASH}, "note": f"k={KEY}"}},
        tried=[KEY, (HASH, "ok"), {"inner": [f"x{HASH}y"]}],
        error=ValueError(f"bad credentials {KEY}/{HASH}"),
        text=f"url?key={KEY}&hash={HASH}",
    )

    raw = buffer.getvalue()
    assert KEY not in raw
    assert HASH not in raw
    [line] = buffered_lines(buffer)
    assert line["body"] == {
        "request": {"credentials": {"key": REDACTED, "hash": REDACTED}, "note": f"k={REDACTED}"}
    }
    assert line["tried"] == [REDACTED, [REDACTED, "ok"], {"inner": [f"x{REDACTED}y"]}]
    assert line["error"] == f"ValueError: bad credentials {REDACTED}/{REDACTED}"
    assert line["text"] == f"url?key={REDACTED}&hash={REDACTED}"


def test_secrets_in_an_exception_traceback_are_redacted() -> None:
    buffer = log_to_buffer(secrets=(KEY, HASH))

    try:
        raise RuntimeError(f"provider echoed {KEY} and {HASH}")
    except RuntimeError:
        structlog.get_logger("test").exception("cancel_failed", order_id="o1")

    raw = buffer.getvalue()
    assert KEY not in raw
    assert HASH not in raw
    [line] = buffered_lines(buffer)
    assert f"RuntimeError: provider echoed {REDACTED} and {REDACTED}" in line["exception"]
    assert line["level"] == "error"


@pytest.mark.parametrize(
    "name", ["key", "hash", "KEY", "api_key", "api_hash", "password", "authentication"]
)
def test_a_value_under_a_sensitive_key_name_is_redacted_even_if_not_a_known_secret(
    name: str,
) -> None:
    buffer = log_to_buffer()

    structlog.get_logger("test").info("call", **{name: "unregistered-value"}, nested={name: "also"})

    [line] = buffered_lines(buffer)
    assert (line[name], line["nested"][name]) == (REDACTED, REDACTED)


def test_empty_values_under_sensitive_names_and_missing_credentials_leave_the_line_alone() -> None:
    buffer = log_to_buffer(secrets=("", ""))

    structlog.get_logger("test").info("config_loaded", key="", hash=None, note="nothing to hide")

    [line] = buffered_lines(buffer)
    assert (line["key"], line["hash"], line["note"]) == ("", None, "nothing to hide")


def test_a_secret_containing_another_secret_is_redacted_whole() -> None:
    redactor = SecretRedactor(["abc", "xxabcxx"])

    assert redactor.scrub("see xxabcxx and abc") == f"see {REDACTED} and {REDACTED}"


def test_the_redactor_as_a_processor_leaves_other_values_untouched() -> None:
    redactor = SecretRedactor([KEY])
    event = {"event": "x", "count": 3, "ratio": 0.5, "flag": True, "none": None, "text": "plain"}

    assert redactor(None, "info", dict(event)) == event


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(f'{{"key": "{KEY}"}}'.encode(), id="bytes-body"),
        pytest.param(
            type("Url", (), {"__str__": lambda self: f"https://x.test/?key={KEY}"})(), id="object"
        ),
        pytest.param({KEY: "as a dict key"}, id="dict-key"),
    ],
)
def test_a_secret_inside_a_value_the_renderer_stringifies_is_redacted(value: object) -> None:
    buffer = log_to_buffer(secrets=(KEY,))

    structlog.get_logger("test").warning("provider_answer", body=value)

    assert KEY not in buffer.getvalue()


@pytest.mark.parametrize(
    ("to_state", "level"),
    [
        (OrderState.NEEDS_ATTENTION, "error"),
        (OrderState.TOO_LATE, "warning"),
        (OrderState.NOT_FOUND, "warning"),
        (OrderState.CANCELLED, "info"),
    ],
)
def test_outcomes_a_person_must_look_at_are_logged_loud(
    tmp_ledger: Ledger, order_factory: Callable[..., Order], to_state: OrderState, level: str
) -> None:
    order = order_factory(send_at=tmp_ledger.now() + timedelta(hours=1))
    store, now = tmp_ledger.store, tmp_ledger.now()
    store.transition(order.order_id, OrderState.SCHEDULED, OrderState.CANCEL_REQUESTED, now=now,
                     reason="asked")  # fmt: skip
    store.transition(order.order_id, OrderState.CANCEL_REQUESTED, OrderState.CANCELLING, now=now,
                     reason="sending")  # fmt: skip

    with capture_logs() as logs:
        store.transition(order.order_id, OrderState.CANCELLING, to_state, now=now, reason="end")

    assert [e["log_level"] for e in logs if e["event"] == "order_state_changed"] == [level]
