"""The smsledger config file: TOML, every key optional, every key checked.

Where the file comes from: ``--config``, else ``SMSLEDGER_CONFIG``, else the first that exists of
``./smsledger.toml``, ``~/.config/smsledger/smsledger.toml`` and
``/etc/smsledger/smsledger.toml`` (`config_search_path`); with none of them, the defaults
below. ``ILETIMERKEZI_API_KEY`` / ``ILETIMERKEZI_API_HASH`` override the file's credentials.
Unknown keys and wrong types are errors naming the key, because a typo in
``refuse_before_seconds`` must not silently leave the default margin in force.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ledger._urls import display_url
from ledger.errors import ConfigError
from ledger.margins import DEFAULT_REFUSE_BEFORE, DEFAULT_WARN_BEFORE, Margins, margins_problem

__all__ = [
    "ALERT_EVENTS",
    "AlertsConfig",
    "ApiConfig",
    "Config",
    "LedgerConfig",
    "LogConfig",
    "MetricsConfig",
    "ObserveConfig",
    "ReconcileConfig",
    "SchedulerConfig",
    "WindowsConfig",
    "config_search_path",
    "find_config_path",
    "load_config",
    "parse_listen",
    "webhook_host",
]

ENV_CONFIG = "SMSLEDGER_CONFIG"
ENV_KEY = "ILETIMERKEZI_API_KEY"
ENV_HASH = "ILETIMERKEZI_API_HASH"
ENV_ALERT_SECRET = "SMSLEDGER_ALERT_SECRET"  # noqa: S105 (the variable's name, not a secret)
DEFAULT_CONFIG_NAME = "smsledger.toml"
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class LedgerConfig:
    url: str = field(default="sqlite:///smsledger.db", repr=False)
    synchronous: str = "FULL"  # SQLite PRAGMA synchronous: FULL for an audit ledger
    busy_timeout_seconds: float = 30.0

    def __repr__(self) -> str:
        return (
            f"LedgerConfig(url={display_url(self.url)!r}, synchronous={self.synchronous!r}, "
            f"busy_timeout_seconds={self.busy_timeout_seconds!r})"
        )


@dataclass(frozen=True)
class WindowsConfig:
    warn_before_seconds: float = DEFAULT_WARN_BEFORE.total_seconds()
    refuse_before_seconds: float = DEFAULT_REFUSE_BEFORE.total_seconds()

    @property
    def warn_before(self) -> timedelta:
        return timedelta(seconds=self.warn_before_seconds)

    @property
    def refuse_before(self) -> timedelta:
        return timedelta(seconds=self.refuse_before_seconds)

    @property
    def margins(self) -> Margins:
        return Margins(self.warn_before, self.refuse_before)


@dataclass(frozen=True)
class ApiConfig:
    base_url: str = "https://api.iletimerkezi.com"
    key: str = field(default="", repr=False)
    hash: str = field(default="", repr=False)
    timeout_seconds: float = 10.0

    @property
    def has_credentials(self) -> bool:
        return bool(self.key and self.hash)


@dataclass(frozen=True)
class SchedulerConfig:
    poll_seconds: float = 1.0
    max_concurrent_cancels: int = 16
    #: How long after a cancel that may have been delivered the provider gets to show it took.
    cancel_settle_seconds: float = 20.0
    #: The longest `run --once` runs; unsettled orders are left to the next run.
    once_deadline_seconds: float = 60.0
    #: Above this difference between our clock and the provider's, `clock_skew` is logged and
    #: alerted, and `check` fails; below it too, the margins are widened by the skew.
    max_clock_skew_seconds: float = 5.0


#: Every event `[alerts] events` may name; the first five are the default.
ALERT_EVENTS = (
    "needs_attention",
    "too_late",
    "cancel_refused",
    "credentials_rejected",
    "clock_skew",
    "cancel_at_risk",
    "cancelled",
)


@dataclass(frozen=True)
class AlertsConfig:
    """Where alerts go (`webhook_url` empty: nowhere, and none is recorded) and which."""

    webhook_url: str = field(default="", repr=False)
    events: tuple[str, ...] = ALERT_EVENTS[:5]
    secret: str = field(default="", repr=False)
    timeout_seconds: float = 5.0
    give_up_after_seconds: float = 86400.0

    @property
    def enabled(self) -> bool:
        return bool(self.webhook_url)


@dataclass(frozen=True)
class MetricsConfig:
    #: HOST:PORT of the /metrics, /healthz and /readyz server; empty: none.
    listen: str = ""


@dataclass(frozen=True)
class ObserveConfig:
    """Probing `scheduled` orders to learn the provider's queue lead (see `smsledger margins`)."""

    #: Orders newly probed per rolling day; 0 turns probing off (answers are still kept).
    probe_orders_per_day: int = 24
    #: The most probe calls one order gets.
    max_probes_per_order: int = 12


@dataclass(frozen=True)
class ReconcileConfig:
    """`[reconcile]`: reading the provider's truth back (see `scheduler.reconcile`)."""

    #: `smsledger reconcile` without --days reads orders created this many days back to today.
    days: int = 10
    #: The label of orders imported from the provider (scheduled in its panel or elsewhere).
    import_label: str = "imported"
    #: The daemon reconciles this often (one daemon per period); 0 turns it off.
    every_seconds: float = 900.0
    #: A dispatched order is read with get-report this long after its send time (and again
    #: as often while the provider says 113, up to 24 h after it).
    follow_up_seconds: float = 600.0
    #: needs_attention orders are read again this often, up to 24 h after their send time.
    recheck_seconds: float = 300.0


@dataclass(frozen=True)
class LogConfig:
    path: str = "smsledger.log.jsonl"
    level: str = "info"


@dataclass(frozen=True)
class Config:
    """Everything the ledger, the daemon and the command read from the config file."""

    timezone: str = "Europe/Istanbul"
    ledger: LedgerConfig = field(default_factory=LedgerConfig)
    windows: WindowsConfig = field(default_factory=WindowsConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    log: LogConfig = field(default_factory=LogConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    observe: ObserveConfig = field(default_factory=ObserveConfig)
    reconcile: ReconcileConfig = field(default_factory=ReconcileConfig)
    source: str | None = None  # the file it was read from, None for defaults

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def credentials_problem(self) -> str | None:
        """Why the provider cannot be called with this config, or None when it can."""
        if self.api.has_credentials:
            return None
        where = f"in {self.source} " if self.source else f"in {DEFAULT_CONFIG_NAME} "
        return f"no API credentials: set api.key and api.hash {where}or {ENV_KEY} / {ENV_HASH}"

    def require_credentials(self) -> None:
        """Raise ConfigError (exit 2) unless the API key and hash are both set."""
        problem = self.credentials_problem()
        if problem is not None:
            raise ConfigError(problem)

    def redacted(self) -> dict[str, Any]:
        """The config as a dict fit for a log line: credentials shown only as set or not."""
        out: dict[str, Any] = {"timezone": self.timezone, "source": self.source}
        for name in _SECTIONS:
            section = getattr(self, name)
            out[name] = {f.name: getattr(section, f.name) for f in fields(section)}
        out["ledger"]["url"] = display_url(self.ledger.url)
        out["api"]["key"] = "<set>" if self.api.key else "<missing>"
        out["api"]["hash"] = "<set>" if self.api.hash else "<missing>"
        # A chat webhook's URL is itself a credential: show only where it points.
        out["alerts"]["webhook_url"] = webhook_host(self.alerts.webhook_url)
        out["alerts"]["secret"] = "<set>" if self.alerts.secret else "<missing>"
        out["alerts"]["events"] = list(self.alerts.events)
        return out


def webhook_host(url: str) -> str:
    """A webhook URL as logs and listings may show it: scheme and host only ("" when off)."""
    if not url:
        return ""
    scheme, sep, rest = url.partition("://")
    host = rest.split("/", 1)[0].rpartition("@")[2]
    return f"{scheme}://{host}/..." if sep else "<set>"


_SECTIONS: dict[str, type[Any]] = {
    "ledger": LedgerConfig,
    "windows": WindowsConfig,
    "api": ApiConfig,
    "scheduler": SchedulerConfig,
    "log": LogConfig,
    "alerts": AlertsConfig,
    "metrics": MetricsConfig,
    "observe": ObserveConfig,
    "reconcile": ReconcileConfig,
}


def config_search_path(environ: Mapping[str, str] | None = None) -> list[Path]:
    """Where a config file is looked for when none is named, first found wins: the working
    folder, the user's (``$XDG_CONFIG_HOME`` or ``~/.config``), the system's."""
    env = os.environ if environ is None else environ
    user = Path(env.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return [
        Path(DEFAULT_CONFIG_NAME),
        user / "smsledger" / DEFAULT_CONFIG_NAME,
        Path("/etc/smsledger") / DEFAULT_CONFIG_NAME,
    ]


def find_config_path(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """Return the config file to read: explicit, else $SMSLEDGER_CONFIG, else the first of
    `config_search_path` that exists; None (the defaults) when there is none."""
    if explicit is not None:
        return Path(explicit)
    env = os.environ.get(ENV_CONFIG)
    if env:
        return Path(env)
    return next((path for path in config_search_path() if path.is_file()), None)


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Read and check a config file (or the defaults when `path` is None), then apply env overrides.

    The file must exist; use `find_config_path` to choose it the way the command does.
    """
    env = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    source: str | None = None
    if path is not None:
        file = Path(path)
        try:
            text = file.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"config file {file} does not exist") from None
        except OSError as exc:
            raise ConfigError(f"config file {file} cannot be read: {exc.strerror}") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {file} is not valid TOML: {exc}") from None
        source = str(file)
    config = _build(data, source)
    if path is not None:
        config = _anchor_paths(config, Path(path).resolve().parent)
    alert_secret = env.get(ENV_ALERT_SECRET)
    if alert_secret:
        config = replace(config, alerts=replace(config.alerts, secret=alert_secret))
    key = env.get(ENV_KEY)
    hash_ = env.get(ENV_HASH)
    if key or hash_:
        config = replace(
            config,
            api=replace(config.api, key=key or config.api.key, hash=hash_ or config.api.hash),
        )
    return config


def _anchor_paths(config: Config, base: Path) -> Config:
    """Read relative file paths in a config file against the file's folder, not the caller's cwd.

    A daemon started by systemd from ``/`` must find the same ledger as the operator who types
    ``smsledger --config /etc/smsledger.toml list`` from their home folder.
    """
    log_path = config.log.path
    if log_path and log_path != "-" and not Path(log_path).is_absolute():
        log_path = str(base / log_path)
    url = config.ledger.url
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/"):
        rest = url[len(prefix) :]
        if rest and not rest.startswith(":memory:"):
            url = prefix + str(base / rest)
    return replace(
        config, log=replace(config.log, path=log_path), ledger=replace(config.ledger, url=url)
    )


def _build(data: dict[str, Any], source: str | None) -> Config:
    where = f" in {source}" if source else ""
    sections: dict[str, Any] = {}
    timezone = Config.timezone
    for key, value in data.items():
        if key == "timezone":
            timezone = _check_type("timezone", value, str, where)
        elif key in _SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"[{key}]{where} must be a table")
            sections[key] = _build_section(key, _SECTIONS[key], value, where)
        else:
            raise ConfigError(f"unknown config key {key!r}{where}")
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"timezone{where}: unknown time zone {timezone!r}") from None
    config = Config(timezone=timezone, source=source, **sections)
    _check_values(config, where)
    return config


def _build_section(name: str, cls: type[Any], values: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"unknown config key {name}.{key}{where}")
        default = getattr(cls(), key)
        expected: type[Any] | tuple[type[Any], ...] = type(default)
        if isinstance(default, float):
            expected = (int, float)
        if isinstance(default, tuple):  # a list of strings in TOML
            _check_type(f"{name}.{key}", value, list, where)
            for item in value:
                _check_type(f"{name}.{key}[]", item, str, where)
            kwargs[key] = tuple(value)
            continue
        kwargs[key] = _check_type(f"{name}.{key}", value, expected, where)
        if isinstance(default, float):
            kwargs[key] = float(value)
            if not math.isfinite(kwargs[key]):  # TOML has nan and inf; no duration is either
                raise ConfigError(f"{name}.{key}{where} must be a finite number, got {value!r}")
    return cls(**kwargs)


def _check_type(
    key: str, value: Any, expected: type[Any] | tuple[type[Any], ...], where: str
) -> Any:
    # bool is an int subclass: `poll_seconds = true` must not read as 1.
    if isinstance(value, bool) or not isinstance(value, expected):
        names = (
            " or ".join(t.__name__ for t in expected)
            if isinstance(expected, tuple)
            else expected.__name__
        )
        names = names.replace("str", "string").replace("int", "integer")
        raise ConfigError(f"{key}{where} must be a {names}, got {value!r}")
    return value


def _check_values(config: Config, where: str) -> None:
    w = config.windows
    problem = margins_problem(
        w.warn_before_seconds,
        w.refuse_before_seconds,
        names=("windows.warn_before_seconds", "windows.refuse_before_seconds"),
        unit="",
        where=where,
    )
    if problem is not None:
        raise ConfigError(problem)
    if config.api.timeout_seconds <= 0:
        raise ConfigError(f"api.timeout_seconds{where} must be positive")
    if not config.api.base_url.startswith(("http://", "https://")):
        raise ConfigError(f"api.base_url{where} must start with http:// or https://")
    if config.scheduler.poll_seconds <= 0:
        raise ConfigError(f"scheduler.poll_seconds{where} must be positive")
    if config.scheduler.max_concurrent_cancels < 1:
        raise ConfigError(f"scheduler.max_concurrent_cancels{where} must be at least 1")
    if config.scheduler.cancel_settle_seconds < 0:
        raise ConfigError(f"scheduler.cancel_settle_seconds{where} must not be negative")
    if config.scheduler.once_deadline_seconds <= 0:
        raise ConfigError(f"scheduler.once_deadline_seconds{where} must be positive")
    _check_operations(config, where)
    _check_observe(config.observe, where)
    _check_reconcile(config.reconcile, where)
    if config.log.level.lower() not in LOG_LEVELS:
        raise ConfigError(f"log.level{where} must be one of {', '.join(LOG_LEVELS)}")
    if config.ledger.synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
        raise ConfigError(f"ledger.synchronous{where} must be OFF, NORMAL, FULL or EXTRA")
    if config.ledger.busy_timeout_seconds < 0:
        raise ConfigError(f"ledger.busy_timeout_seconds{where} must not be negative")


def _check_operations(config: Config, where: str) -> None:
    """The keys of alerts, metrics and the clock skew limit."""
    if config.scheduler.max_clock_skew_seconds <= 0:
        raise ConfigError(f"scheduler.max_clock_skew_seconds{where} must be positive")
    if config.metrics.listen:
        _check_listen(config.metrics.listen, f"metrics.listen{where}")
    alerts = config.alerts
    if alerts.webhook_url and not alerts.webhook_url.startswith(("http://", "https://")):
        raise ConfigError(f"alerts.webhook_url{where} must start with http:// or https://")
    unknown = [e for e in alerts.events if e not in ALERT_EVENTS]
    if unknown:
        raise ConfigError(
            f"alerts.events{where}: unknown event {unknown[0]!r}; events are: "
            + ", ".join(ALERT_EVENTS)
        )
    if alerts.timeout_seconds <= 0:
        raise ConfigError(f"alerts.timeout_seconds{where} must be positive")
    if alerts.give_up_after_seconds <= 0:
        raise ConfigError(f"alerts.give_up_after_seconds{where} must be positive")


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT (``[::1]:9464`` for IPv6) as a (host, port) pair; ValueError when it is not."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:9464)")
    return host, int(port)


def _check_listen(text: str, key: str) -> None:
    try:
        parse_listen(text)
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}") from None


def _check_observe(observe: ObserveConfig, where: str) -> None:
    if observe.probe_orders_per_day < 0:
        raise ConfigError(f"observe.probe_orders_per_day{where} must not be negative")
    if observe.max_probes_per_order < 1:
        raise ConfigError(f"observe.max_probes_per_order{where} must be at least 1")


def _check_reconcile(r: ReconcileConfig, where: str) -> None:
    if r.days < 1:
        raise ConfigError(f"reconcile.days{where} must be at least 1")
    if not r.import_label.isprintable() or len(r.import_label) > 200:
        raise ConfigError(
            f"reconcile.import_label{where} must be printable text of at most 200 characters"
        )
    for name in ("every_seconds", "follow_up_seconds"):
        if getattr(r, name) < 0:
            raise ConfigError(f"reconcile.{name}{where} must not be negative")
    if r.recheck_seconds <= 0:
        raise ConfigError(f"reconcile.recheck_seconds{where} must be positive")
