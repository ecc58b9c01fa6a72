"""The library's log router: one behaviour in both copies, names under ``smsledger``."""

from __future__ import annotations

import inspect
import logging

import pytest

import ledger._log
import scheduler.provider._log


def test_the_provider_packages_router_is_the_same_as_the_ledgers() -> None:
    """The provider may not import `ledger`, so it holds a copy: the copy must not drift."""
    for name in ("Logger", "get_logger", "_to_stdlib"):
        assert inspect.getsource(getattr(scheduler.provider._log, name)) == inspect.getsource(
            getattr(ledger._log, name)
        )


def test_the_smsledger_logger_has_a_null_handler_so_nothing_reaches_last_resort() -> None:
    handlers = logging.getLogger("smsledger").handlers

    assert [type(h) for h in handlers].count(logging.NullHandler) == 1


@pytest.mark.parametrize("module", [ledger._log, scheduler.provider._log])
def test_a_logger_name_outside_the_smsledger_hierarchy_is_refused(module: object) -> None:
    with pytest.raises(ValueError, match="not under 'smsledger'"):
        module.get_logger("ledger.store")  # type: ignore[attr-defined]


def test_unconfigured_events_reach_an_applications_logging_handler_with_their_fields(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="smsledger")

    ledger._log.get_logger("smsledger.test").info("order_registered", order_id="o1", key="s3cr3t")

    [record] = caplog.records
    assert (record.name, record.levelno) == ("smsledger.test", logging.INFO)
    assert record.getMessage() == "event=order_registered order_id=o1 key=[REDACTED]"
    assert record.smsledger == {  # type: ignore[attr-defined]
        "event": "order_registered",
        "order_id": "o1",
        "key": "[REDACTED]",
    }


def test_below_the_applications_level_nothing_is_rendered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="smsledger")

    ledger._log.get_logger("smsledger.test").info("ignored")
    scheduler.provider._log.get_logger("smsledger.test").warning("kept")

    assert [r.getMessage() for r in caplog.records] == ["event=kept"]


def test_an_exception_event_carries_the_traceback_to_the_applications_handler(
    caplog: pytest.LogCaptureFixture,
) -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        ledger._log.get_logger("smsledger.test").exception("cancel_failed", order_id="o1")

    [record] = caplog.records
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None
    assert record.exc_info[0] is RuntimeError
