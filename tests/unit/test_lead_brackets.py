"""The pure half of lead measurement: answers to brackets, brackets to a verdict, probe places."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest

from ledger.leads import (
    Bracket,
    Observation,
    Verdict,
    assess,
    brackets,
    histogram,
    percentile,
)
from scheduler.probing import (
    DENSE_STEP_SECONDS,
    LADDER_SECONDS,
    next_probe_due,
    probe_prior,
    probe_targets,
)

AT = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def obs(order_id: str, seconds_left: float, status: int | None) -> Observation:
    return Observation(order_id, AT, seconds_left, status, "probe")


def test_456_bounds_the_lead_from_above_and_113_or_114_from_below() -> None:
    found = brackets(
        [
            obs("a", 600, 456),
            obs("a", 200, 456),
            obs("a", 150, 113),
            obs("a", 100, 114),
            obs("b", 300, 456),
            obs("c", 400, 113),
        ]
    )
    assert found == {
        "a": Bracket("a", 150, 200),
        "b": Bracket("b", None, 300),
        "c": Bracket("c", 400, None),
    }
    assert found["a"].closed and found["a"].midpoint == 175 and found["a"].width == 50
    assert not found["b"].closed and not found["c"].closed


def test_answers_with_no_time_left_or_without_a_lead_code_bound_nothing() -> None:
    found = brackets([obs("a", -5, 113), obs("a", 0, 456), obs("b", 100, 115), obs("c", 90, None)])
    assert found == {}


def test_a_self_contradicting_order_is_not_a_closed_bracket() -> None:
    assert not brackets([obs("a", 100, 456), obs("a", 150, 113)])["a"].closed


def test_percentiles_are_nearest_rank() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 99) == 99.0


def closed(n: int, lower: float = 140, width: float = 20) -> dict[str, Bracket]:
    return {f"o{i}": Bracket(f"o{i}", lower + i, lower + i + width) for i in range(n)}


def test_the_verdict_is_refuse_before_too_small_when_a_lead_outran_it() -> None:
    found = closed(6)
    report = assess(
        found, [200.0], refuse_before_seconds=120, warn_before_seconds=900, poll_seconds=1
    )
    assert report.verdict is Verdict.REFUSE_BEFORE_TOO_SMALL
    assert report.longest_lead_lower_bound_seconds == 145
    # longest closed upper 165 + poll 1 + 3 x p99 0.2 s + 30 s
    assert report.suggested_refuse_before_seconds == pytest.approx(196.6)
    assert report.suggested_warn_before_seconds == pytest.approx(796.6)


def test_the_verdict_needs_five_closed_brackets_to_say_ok() -> None:
    kwargs = {"refuse_before_seconds": 300.0, "warn_before_seconds": 900.0, "poll_seconds": 1.0}
    assert assess(closed(4), [], **kwargs).verdict is Verdict.NOT_ENOUGH_DATA
    assert assess(closed(5), [], **kwargs).verdict is Verdict.OK


def test_without_a_closed_bracket_the_suggestion_rests_on_the_longest_lower_bound() -> None:
    found = {"a": Bracket("a", 250, None), "b": Bracket("b", None, 900)}
    report = assess(found, [], refuse_before_seconds=300, warn_before_seconds=900, poll_seconds=2)
    assert report.suggested_refuse_before_seconds == 282
    assert report.lead_p50 is None and report.verdict is Verdict.NOT_ENOUGH_DATA


def test_the_json_has_exactly_the_documented_keys() -> None:
    report = assess({}, [], refuse_before_seconds=300, warn_before_seconds=900, poll_seconds=1)
    assert report.to_json() == {
        "orders_observed": 0,
        "closed_brackets": 0,
        "longest_lead_lower_bound_seconds": None,
        "lead_seconds": {"p50": None, "p90": None, "max": None},
        "refuse_before_seconds": 300,
        "warn_before_seconds": 900,
        "suggested_refuse_before_seconds": None,
        "suggested_warn_before_seconds": None,
        "verdict": "not_enough_data",
    }


def test_the_histogram_counts_midpoints_by_bin_with_the_gaps() -> None:
    found = [Bracket("a", 120, 140), Bracket("b", 130, 150), Bracket("c", 190, 210)]
    assert histogram(found) == [(120.0, 150.0, 2), (150.0, 180.0, 0), (180.0, 210.0, 1)]


def test_before_any_bracket_closes_probes_follow_the_wide_ladder() -> None:
    assert probe_prior([Bracket("a", None, 300)]) is None
    assert probe_targets(None, 12) == list(LADDER_SECONDS)
    four = probe_targets(None, 4)
    assert len(four) == 4 and four[0] == 1200 and four[-1] == LADDER_SECONDS[-1]


def test_once_leads_are_known_probes_are_dense_around_them() -> None:
    prior = probe_prior([Bracket("a", 130, 150), Bracket("b", 160, 175)])
    assert prior == (130, 175)
    targets = probe_targets(prior, 12)
    assert targets[0] > 175 and targets[-1] < 130
    gaps = [a - b for a, b in itertools.pairwise(targets)]
    assert all(gap == DENSE_STEP_SECONDS for gap in gaps)
    assert len(probe_targets(prior, 3)) == 3


def test_an_order_is_due_at_each_target_once() -> None:
    targets = [300.0, 200.0, 100.0]
    assert not next_probe_due(targets, 350, None)
    assert next_probe_due(targets, 299, None)
    assert not next_probe_due(targets, 290, 299)
    assert next_probe_due(targets, 199, 299)
    assert next_probe_due(targets, 50, 299)  # a late pass probes once, now
    assert not next_probe_due(targets, 50, 99)
