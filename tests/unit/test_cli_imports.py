"""`register --from`'s reading of CSV and JSON lines: formats, every kind of bad line, labels."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from scheduler.cli.imports import check_lines

ZONE = ZoneInfo("Europe/Istanbul")
NOW = datetime(2030, 1, 1, 0, 0, tzinfo=UTC)
LATER = datetime(2030, 1, 2, 7, 0, tzinfo=UTC)


def test_csv_with_a_header_in_any_column_order_reads_naive_times_in_the_zone() -> None:
    check = check_lines(
        ["send_at,label,order_id\r\n", "2030-01-02T10:00,spring,1\r\n", "\n",
         "2030-01-02T07:00Z,,2\n"],
        ZONE, NOW, label="default",
    )  # fmt: skip
    assert check.format == "csv"
    assert check.problems == []
    assert [(r.line, r.order_id, r.send_at, r.label) for r in check.rows] == [
        (2, "1", LATER, "spring"),
        (4, "2", LATER, "default"),
    ]


def test_json_lines_are_told_by_their_first_character() -> None:
    check = check_lines(
        ['{"order_id": 1, "send_at": "2030-01-02T10:00", "label": "x"}\n',
         '{"order_id": "2", "send_at": "2030-01-02T07:00Z", "label": null}\n'],
        ZONE, NOW,
    )  # fmt: skip
    assert check.format == "jsonl"
    assert [(r.order_id, r.send_at, r.label) for r in check.rows] == [
        ("1", LATER, "x"),
        ("2", LATER, None),
    ]


def test_every_bad_line_is_named_with_its_number_and_what_is_wrong() -> None:
    check = check_lines(
        [
            '{"order_id": "ok", "send_at": "2030-01-02T10:00"}',
            "[1, 2]",
            "{broken",
            '{"order_id": "a", "send_at": 5}',
            '{"order_id": "b"}',
            '{"order_id": "c", "send_at": "2030-01-02T10:00", "colour": "red"}',
            '{"order_id": "d", "send_at": "2029-01-02T10:00"}',
            '{"order_id": "e", "send_at": "2030-01-02T10:00", "label": "a\\u202eb"}',
            '{"order_id": "ok", "send_at": "2030-01-03T10:00"}',
            '{"order_id": "ok", "send_at": "2030-01-02T10:00"}',
            '{"order_id": "f", "send_at": "2030-03-31T03:30"}',
        ],
        ZONE,
        NOW,
    )
    problems = dict(check.problems)
    assert sorted(problems) == [2, 3, 4, 5, 6, 7, 8, 9]
    assert problems[2] == "not a JSON object but list"
    assert problems[3].startswith("not JSON (")
    assert problems[4] == "send_at must be text, got int"
    assert problems[5] == "missing send_at"
    assert problems[6].startswith("unknown key(s) colour")
    assert "is not in the future" in problems[7]
    assert "control character U+202E" in problems[8]
    assert problems[9] == (
        "order ok is on line 1 for 2030-01-02T07:00:00Z and here for 2030-01-03T07:00:00Z"
    )
    assert [r.line for r in check.rows] == [1, 10, 11], "a repeat with the same time is fine"


def test_a_csv_header_without_the_needed_columns_is_one_problem_on_line_1() -> None:
    check = check_lines(["id,when\n", "1,2030-01-02T10:00\n"], ZONE, NOW)
    assert check.rows == []
    assert check.problems == [
        (1, "the CSV header must name order_id, send_at, label (label optional): "
            "unknown column(s) id, when"),
    ]  # fmt: skip
    short = check_lines(["order_id,send_at\n", "1\n", "2,2030-01-02T10:00,x\n"], ZONE, NOW)
    assert short.problems == [
        (2, "1 field(s), the header names 2"),
        (3, "3 field(s), the header names 2"),
    ]


def test_an_empty_file_has_nothing_to_register() -> None:
    check = check_lines(["\n", "  \n"], ZONE, NOW)
    assert (check.rows, check.problems) == ([], [])
