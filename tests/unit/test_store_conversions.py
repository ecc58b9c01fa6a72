"""The ledger's own datetime conversion for bulk writes must store exactly what the column type
would: a row written by `register_many` and one written through SQLAlchemy must compare equal."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect

from ledger.store import _datetime_to_db, orders_t

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
