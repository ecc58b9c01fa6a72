"""The sandbox's faults: what it does wrong, on which endpoints, and the checks of their values."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from scheduler.provider.wire import ENDPOINTS

__all__ = ["Faults"]

#: The kinds of fault a request can meet (see `Faults`).
_Fault = Literal["error", "drop", "garbage", "drip", "nested", "huge"]


@dataclass
class Faults:
    """What the sandbox does wrong, and on which endpoints.

    Rates are shares of requests in [0, 1] and together at most 1. `endpoints` limits `latency`
    and the rates (None: every provider endpoint); the `*_next` counts are per endpoint already
    and always apply: the next N requests to that endpoint get a 503 (`fail_next`, work not
    done), lose their answer (`drop_next`, work done) or get an unreadable one (`garbage_next`,
    work done). The sandbox keeps its own copy and counts that copy down.

    Three more kinds do the work and spoil only the answer: `drip` writes the real answer, head
    and body, one byte every `drip_interval` seconds (each byte well within any read timeout,
    the whole answer minutes long); `nested` answers HTTP 200 with a JSON array nested
    `NESTED_DEPTH` deep; `huge` answers HTTP 200 with a body that never ends (until the client
    hangs up, the sandbox stops or `HUGE_MAX_BYTES` went out). `clock_offset` (seconds, either
    sign) puts the sandbox's clock that far ahead of the clock it was given: the orders'
    lifecycle and every answer's `Date` header follow it.

    `report_lag` (seconds of sandbox time) stands for an eventually consistent provider: after
    an accepted cancel, get-report keeps answering 456 for that long before it answers 115 (a
    cancel-order meanwhile answers 455: the order is cancelled).
    """

    latency: float = 0.0
    error_rate: float = 0.0
    drop_rate: float = 0.0
    garbage_rate: float = 0.0
    endpoints: frozenset[str] | None = None
    fail_next: dict[str, int] = field(default_factory=dict)
    drop_next: dict[str, int] = field(default_factory=dict)
    garbage_next: dict[str, int] = field(default_factory=dict)
    drip_rate: float = 0.0
    nested_rate: float = 0.0
    huge_rate: float = 0.0
    drip_next: dict[str, int] = field(default_factory=dict)
    nested_next: dict[str, int] = field(default_factory=dict)
    huge_next: dict[str, int] = field(default_factory=dict)
    drip_interval: float = 0.5
    clock_offset: float = 0.0
    report_lag: float = 0.0

    def __post_init__(self) -> None:
        _check_number("latency", self.latency, upper=math.inf)
        _check_number("drip_interval", self.drip_interval, upper=math.inf)
        _check_number("report_lag", self.report_lag, upper=math.inf)
        for name in _RATES:
            _check_number(name, getattr(self, name), upper=1.0)
        if sum(getattr(self, name) for name in _RATES) > 1.0:
            raise ValueError(f"{' + '.join(_RATES)} must not exceed 1")
        if (
            isinstance(self.clock_offset, bool)
            or not isinstance(self.clock_offset, int | float)
            or not math.isfinite(self.clock_offset)
        ):
            raise ValueError(f"clock_offset must be a finite number, got {self.clock_offset!r}")
        if self.endpoints is not None:
            self.endpoints = _endpoint_set(self.endpoints)
        for name in _NEXT_COUNTS:
            setattr(self, name, _counters(name, getattr(self, name)))

    def applies_to(self, endpoint: str) -> bool:
        """Whether `latency` and the rates apply to `endpoint`."""
        return self.endpoints is None or endpoint in self.endpoints

    def to_dict(self) -> dict[str, Any]:
        """The faults as JSON-ready data, the shape `from_dict` and the control endpoint take."""
        return {
            "latency": self.latency,
            "error_rate": self.error_rate,
            "drop_rate": self.drop_rate,
            "garbage_rate": self.garbage_rate,
            "endpoints": None if self.endpoints is None else sorted(self.endpoints),
            "fail_next": dict(self.fail_next),
            "drop_next": dict(self.drop_next),
            "garbage_next": dict(self.garbage_next),
            "drip_rate": self.drip_rate,
            "nested_rate": self.nested_rate,
            "huge_rate": self.huge_rate,
            "drip_next": dict(self.drip_next),
            "nested_next": dict(self.nested_next),
            "huge_next": dict(self.huge_next),
            "drip_interval": self.drip_interval,
            "clock_offset": self.clock_offset,
            "report_lag": self.report_lag,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Faults:
        """Build faults from `to_dict`-shaped data; missing fields keep their defaults."""
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown fault fields: {', '.join(sorted(unknown))}")
        values = dict(data)
        if values.get("endpoints") is not None:
            values["endpoints"] = _endpoint_set(values["endpoints"])
        return cls(**values)

    def _copy(self) -> Faults:
        return Faults.from_dict(self.to_dict())


# Each fault's rate and its per-endpoint count, in the order a request meets them.
_FAULT_FIELDS: Final[tuple[tuple[_Fault, str, str], ...]] = (
    ("error", "error_rate", "fail_next"),
    ("drop", "drop_rate", "drop_next"),
    ("garbage", "garbage_rate", "garbage_next"),
    ("drip", "drip_rate", "drip_next"),
    ("nested", "nested_rate", "nested_next"),
    ("huge", "huge_rate", "huge_next"),
)
_RATES: Final = tuple(rate for _, rate, _ in _FAULT_FIELDS)
_NEXT_COUNTS: Final = tuple(count for _, _, count in _FAULT_FIELDS)


def _check_number(name: str, value: object, *, upper: float) -> None:
    """Raise ValueError unless `value` is a finite number in [0, upper]."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0.0 <= value <= upper
    ):
        bound = "a finite number >= 0" if upper == math.inf else f"a number in [0, {upper:g}]"
        raise ValueError(f"{name} must be {bound}, got {value!r}")


def _endpoint_set(names: Iterable[str] | str) -> frozenset[str]:
    if isinstance(names, str):
        names = [part.strip() for part in names.split(",") if part.strip()]
    chosen = frozenset(names)
    unknown = chosen - set(ENDPOINTS)
    if unknown:
        raise ValueError(
            f"unknown endpoints {', '.join(sorted(map(str, unknown)))}; "
            f"choose from {', '.join(ENDPOINTS)}"
        )
    return chosen


def _counters(name: str, counts: Mapping[str, int]) -> dict[str, int]:
    if not isinstance(counts, Mapping):
        raise ValueError(f"{name} must map endpoint names to counts, got {counts!r}")
    _endpoint_set(counts)
    for endpoint, count in counts.items():
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"{name}[{endpoint!r}] must be an int >= 0, got {count!r}")
    return {endpoint: count for endpoint, count in counts.items() if count}
