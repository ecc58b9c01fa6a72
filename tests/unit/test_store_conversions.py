"""The ledger's own datetime conversion for bulk writes must store exactly what the column type
would: a row written by `register_many` and one written through SQLAlchemy must compare equal."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect

from ledger.store import _datetime_from_db, _datetime_to_db, _details_to_db, events_t, orders_t

ZONES = (UTC, timezone(timedelta(hours=3)), timezone(timedelta(hours=-9, minutes=-30)))


@pytest.mark.parametrize("dialect", [sqlite.dialect(), postgresql.psycopg.dialect()])  # type: ignore[no-untyped-call]
@pytest.mark.parametrize(
    "when",
    [
        datetime(2026, 1, 1, tzinfo=zone) + timedelta(microseconds=micro)
        for zone in ZONES
        for micro in (0, 1, 999_999, 86_399_999_999)
    ]
    + [datetime(999, 12, 31, 23, 59, tzinfo=UTC)],
)
def test_bulk_conversion_matches_the_column_type(dialect: Dialect, when: datetime) -> None:
    own = orders_t.c.send_at.type.dialect_impl(dialect).bind_processor(dialect)
    expected = own(when) if own is not None else when
    assert _datetime_to_db(dialect)(when) == expected


def test_bulk_conversion_refuses_a_naive_datetime() -> None:
    with pytest.raises(ValueError, match="naive"):
        _datetime_to_db(sqlite.dialect())(datetime(2026, 1, 1))


@pytest.mark.parametrize(
    "when",
    [datetime(2026, 1, 1, 3, 4, 5, micro, tzinfo=UTC) for micro in (0, 1, 999_999)]
    + [datetime(999, 12, 31, 23, 59, tzinfo=UTC)],
)
def test_a_campaign_batch_reads_back_what_the_column_type_reads(when: datetime) -> None:
    """`transition_batch` reads send times raw (`_datetime_from_db`): the same aware datetime
    as the column type's own result processing of the stored text."""
    dialect = sqlite.dialect()
    stored = _datetime_to_db(dialect)(when)
    own = orders_t.c.send_at.type.dialect_impl(dialect).result_processor(dialect, None)
    assert own is not None
    assert _datetime_from_db(dialect)(stored) == own(stored) == when
    assert _datetime_from_db(dialect)(stored).tzinfo is UTC


@pytest.mark.parametrize("dialect", [sqlite.dialect(), postgresql.psycopg.dialect()])  # type: ignore[no-untyped-call]
def test_event_details_are_converted_by_the_dialect_s_json_type(dialect: Dialect) -> None:
    own = events_t.c.details.type.dialect_impl(dialect).bind_processor(dialect)
    details = {"seconds_left": 1.5}
    converted = _details_to_db(dialect)(details)
    assert type(converted) is type(own(details) if own is not None else details)
