"""`load_config`: defaults, every key checked by name, credentials from env and kept hidden."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import fields, is_dataclass
from datetime import timedelta
from pathlib import Path
from typing import Protocol

import pytest
import structlog

from ledger import Config, ConfigError, Ledger, LedgerError, load_config
from ledger.config import (
    ApiConfig,
    LedgerConfig,
    LogConfig,
    ObserveConfig,
    SchedulerConfig,
    WindowsConfig,
)

KEY = "cfg-test-api-key-0123456789"
HASH = "cfg-test-api-hash-9876543210abcdef"

EVERY_KEY = f"""
timezone = "Europe/Berlin"

[ledger]
url = "sqlite:////var/lib/smsledger/ledger.db"
synchronous = "NORMAL"
busy_timeout_seconds = 12.5

[windows]
warn_before_seconds = 1200
refuse_before_seconds = 240.5

[api]
base_url = "https://sandbox.example.test"
key = "{KEY}"
hash = "{HASH}"
timeout_seconds = 4

[scheduler]
poll_seconds = 0.5
cancel_settle_seconds = 7.5
once_deadline_seconds = 30
max_concurrent_cancels = 4

[log]
path = "/var/log/smsledger/ledger.jsonl"
level = "debug"

[observe]
probe_orders_per_day = 6
max_probes_per_order = 9
"""


class WriteConfig(Protocol):
    def __call__(self, text: str, name: str = ...) -> Path: ...


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    """Write a config file into tmp_path and return its path."""

    def write(text: str, name: str = "smsledger.toml") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return path

    return write


def test_without_a_file_every_setting_has_its_default() -> None:
    config = load_config(None, environ={})

    assert config == Config()
    assert config.source is None
    assert config.timezone == "Europe/Istanbul"
    assert config.ledger == LedgerConfig("sqlite:///smsledger.db", "FULL", 30.0)
    assert (config.windows.warn_before, config.windows.refuse_before) == (
        timedelta(minutes=15),
        timedelta(minutes=5),
    )
    assert not config.api.has_credentials
    assert config.log == LogConfig("smsledger.log.jsonl", "info")


def test_an_empty_file_gives_the_defaults(write_config: WriteConfig) -> None:
    path = write_config("")

    config = load_config(path, environ={})

    assert config.source == str(path)
    assert config.windows == WindowsConfig()
    assert config.api == ApiConfig()


def test_every_key_of_the_documented_example_is_read(write_config: WriteConfig) -> None:
    config = load_config(write_config(EVERY_KEY), environ={})

    assert config.timezone == "Europe/Berlin"
    assert str(config.zone) == "Europe/Berlin"
    assert config.ledger == LedgerConfig("sqlite:////var/lib/smsledger/ledger.db", "NORMAL", 12.5)
    assert config.windows == WindowsConfig(1200.0, 240.5)
    assert config.windows.refuse_before == timedelta(seconds=240.5)
    assert config.api == ApiConfig("https://sandbox.example.test", KEY, HASH, 4.0)
    assert config.scheduler == SchedulerConfig(0.5, 4, 7.5, 30.0)
    assert config.log == LogConfig("/var/log/smsledger/ledger.jsonl", "debug")
    assert config.observe == ObserveConfig(6, 9)


def test_probing_is_on_by_default_and_can_be_turned_off(
    write_config: Callable[[str], Path],
) -> None:
    assert load_config(None, environ={}).observe == ObserveConfig(24, 12)
    off = load_config(write_config("[observe]\nprobe_orders_per_day = 0\n"), environ={})
    assert off.observe.probe_orders_per_day == 0


@pytest.mark.parametrize(
    "text",
    ["probe_orders_per_day = -1", "max_probes_per_order = 0", "max_probes_per_order = 1.5"],
)
def test_bad_probe_settings_are_refused_naming_the_key(
    write_config: Callable[[str], Path], text: str
) -> None:
    with pytest.raises(ConfigError, match=rf"observe\.{text.split()[0]}"):
        load_config(write_config(f"[observe]\n{text}\n"), environ={})


def test_whole_numbers_are_accepted_for_seconds_and_read_as_floats(
    write_config: WriteConfig,
) -> None:
    config = load_config(write_config("[windows]\nwarn_before_seconds = 600\n"), environ={})

    assert config.windows.warn_before_seconds == 600.0
    assert isinstance(config.windows.warn_before_seconds, float)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("timezon = 'UTC'", "unknown config key 'timezon'"),
        ("[window]\nwarn_before_seconds = 60", "unknown config key 'window'"),
        ("[windows]\nrefuse_before_secs = 60", "unknown config key windows.refuse_before_secs"),
        ("[api]\ntoken = 'x'", "unknown config key api.token"),
        ("source = '/etc/other.toml'", "unknown config key 'source'"),
    ],
    ids=["top-level", "section", "windows-key", "api-key", "source-is-not-a-setting"],
)
def test_an_unknown_key_is_an_error_naming_it(
    write_config: WriteConfig, text: str, message: str
) -> None:
    path = write_config(text)

    with pytest.raises(ConfigError, match=message) as error:
        load_config(path, environ={})

    assert str(path) in str(error.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[windows]\nrefuse_before_seconds = '300'",
            "windows.refuse_before_seconds .*must be a integer or float, got '300'",
        ),
        ("[windows]\nwarn_before_seconds = true", "windows.warn_before_seconds .*got True"),
        (
            "[scheduler]\nmax_concurrent_cancels = 2.5",
            "scheduler.max_concurrent_cancels .*must be a integer, got 2.5",
        ),
        ("[scheduler]\npoll_seconds = false", "scheduler.poll_seconds .*got False"),
        ("[ledger]\nurl = 5", "ledger.url .*must be a string, got 5"),
        ("[log]\nlevel = ['info']", r"log.level .*must be a string, got \['info'\]"),
        ("[api]\nkey = 1234", "api.key .*must be a string"),
        ("timezone = 3", "timezone .*must be a string, got 3"),
        ("windows = 900", r"\[windows\] .*must be a table"),
    ],
    ids=[
        "text-for-seconds",
        "bool-for-seconds",
        "float-for-int",
        "bool-for-poll",
        "int-for-url",
        "list-for-level",
        "int-for-key",
        "int-for-timezone",
        "value-for-section",
    ],
)
def test_a_value_of_the_wrong_type_is_an_error_naming_the_key(
    write_config: WriteConfig, text: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write_config(text), environ={})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[windows]\nrefuse_before_seconds = 900",
            r"refuse_before_seconds \(900\).* must be smaller than .*warn_before_seconds \(900\)",
        ),
        (
            "[windows]\nwarn_before_seconds = 60",
            r"refuse_before_seconds \(300\).* must be smaller than .*warn_before_seconds \(60\)",
        ),
        (
            "[windows]\nrefuse_before_seconds = -1",
            "windows.refuse_before_seconds.* must not be negative",
        ),
        ("[api]\ntimeout_seconds = 0", "api.timeout_seconds.* must be positive"),
        (
            "[api]\nbase_url = 'api.iletimerkezi.com'",
            "api.base_url.* must start with http:// or https://",
        ),
        ("[scheduler]\npoll_seconds = 0", "scheduler.poll_seconds.* must be positive"),
        (
            "[scheduler]\nmax_concurrent_cancels = 0",
            "scheduler.max_concurrent_cancels.* must be at least 1",
        ),
        (
            "[scheduler]\ncancel_settle_seconds = -1",
            "scheduler.cancel_settle_seconds.* must not be negative",
        ),
        (
            "[scheduler]\nonce_deadline_seconds = 0",
            "scheduler.once_deadline_seconds.* must be positive",
        ),
        ("[log]\nlevel = 'verbose'", "log.level.* must be one of debug, info, warning, error"),
        (
            "[ledger]\nsynchronous = 'sometimes'",
            "ledger.synchronous.* must be OFF, NORMAL, FULL or EXTRA",
        ),
        (
            "[ledger]\nbusy_timeout_seconds = -5",
            "ledger.busy_timeout_seconds.* must not be negative",
        ),
    ],
    ids=[
        "refuse-equals-warn",
        "refuse-above-warn",
        "negative-refuse",
        "zero-timeout",
        "url-scheme",
        "zero-poll",
        "no-concurrency",
        "negative-settle",
        "zero-once-deadline",
        "bad-level",
        "bad-synchronous",
        "negative-busy-timeout",
    ],
)
def test_an_out_of_range_value_is_an_error_naming_the_key(
    write_config: WriteConfig, text: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write_config(text), environ={})


def _numeric_keys() -> list[tuple[str, str]]:
    """Every (section, key) of the config whose value is a number, new keys included."""
    config = Config()
    return [
        (section.name, key.name)
        for section in fields(Config)
        if is_dataclass(value := getattr(config, section.name))
        for key in fields(value)
        if isinstance(getattr(value, key.name), int | float)
        and not isinstance(getattr(value, key.name), bool)
    ]


NUMERIC_KEYS = _numeric_keys()


def test_the_numeric_keys_are_found() -> None:
    assert {"windows.warn_before_seconds", "scheduler.max_concurrent_cancels"} <= {
        f"{section}.{key}" for section, key in NUMERIC_KEYS
    }


@pytest.mark.parametrize("number", ["nan", "inf", "+inf", "-inf", "-nan"])
@pytest.mark.parametrize(("section", "key"), NUMERIC_KEYS)
def test_nan_and_infinity_are_refused_for_every_numeric_key_naming_it(
    write_config: WriteConfig, section: str, key: str, number: str
) -> None:
    path = write_config(f"[{section}]\n{key} = {number}\n")

    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})

    message = str(caught.value)
    assert message.startswith(f"{section}.{key} in {path} must be a "), message
    assert "\n" not in message


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "", "../../etc/passwd"])
def test_an_unknown_timezone_is_an_error_naming_it(write_config: WriteConfig, zone: str) -> None:
    with pytest.raises(ConfigError, match=f"timezone.*: unknown time zone '{zone}'"):
        load_config(write_config(f'timezone = "{zone}"'), environ={})


def test_a_file_that_is_not_toml_is_an_error_naming_the_file(
    write_config: WriteConfig,
) -> None:
    path = write_config("[windows\nwarn_before_seconds = 900")

    with pytest.raises(ConfigError, match="is not valid TOML") as error:
        load_config(path, environ={})

    assert str(path) in str(error.value)


def test_an_explicitly_named_file_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "smsledger.toml"

    with pytest.raises(ConfigError, match=f"config file {missing} does not exist"):
        load_config(missing, environ={})


def test_a_config_error_is_a_ledger_error() -> None:
    assert issubclass(ConfigError, LedgerError)


# -- credentials -------------------------------------------------------------------------------


def test_the_environment_overrides_the_files_credentials(
    write_config: WriteConfig,
) -> None:
    path = write_config(EVERY_KEY)

    both = load_config(
        path, environ={"ILETIMERKEZI_API_KEY": "env-key", "ILETIMERKEZI_API_HASH": "env-hash"}
    )
    key_only = load_config(path, environ={"ILETIMERKEZI_API_KEY": "env-key"})

    assert (both.api.key, both.api.hash) == ("env-key", "env-hash")
    assert (key_only.api.key, key_only.api.hash) == ("env-key", HASH)


def test_credentials_can_come_from_the_environment_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ILETIMERKEZI_API_KEY", "env-key")
    monkeypatch.setenv("ILETIMERKEZI_API_HASH", "env-hash")

    config = load_config(None)

    assert (config.api.key, config.api.hash) == ("env-key", "env-hash")
    assert config.api.has_credentials


def test_the_config_repr_never_shows_the_key_or_hash(write_config: WriteConfig) -> None:
    config = load_config(write_config(EVERY_KEY), environ={})

    for text in (repr(config), str(config), repr(config.api)):
        assert KEY not in text
        assert HASH not in text
    assert "sandbox.example.test" in repr(config)


@pytest.mark.parametrize(
    ("environ", "shown"),
    [
        ({}, {"key": "<set>", "hash": "<set>"}),
        ({"ILETIMERKEZI_API_KEY": "other-key"}, {"key": "<set>", "hash": "<set>"}),
    ],
    ids=["from-file", "from-environment"],
)
def test_the_redacted_config_shows_credentials_only_as_set(
    write_config: WriteConfig, environ: dict[str, str], shown: dict[str, str]
) -> None:
    redacted = load_config(write_config(EVERY_KEY), environ=environ).redacted()

    text = json.dumps(redacted)
    assert KEY not in text
    assert HASH not in text
    assert "other-key" not in text
    assert {k: redacted["api"][k] for k in ("key", "hash")} == shown
    assert redacted["windows"] == {"warn_before_seconds": 1200.0, "refuse_before_seconds": 240.5}


def test_the_redacted_config_shows_missing_credentials_as_missing() -> None:
    redacted = load_config(None, environ={}).redacted()

    assert (redacted["api"]["key"], redacted["api"]["hash"]) == ("<missing>", "<missing>")
    assert set(redacted) == {
        "timezone", "source", "ledger", "windows", "api", "scheduler", "log", "alerts", "metrics",
        "observe",
        "reconcile",
    }  # fmt: skip


def test_alerts_config_reads_events_and_the_secret_from_the_environment(
    write_config: Callable[[str], Path],
) -> None:
    config = load_config(
        write_config(
            '[alerts]\nwebhook_url = "https://hooks.example/T0/B1/s3cr3t-path"\n'
            'events = ["needs_attention", "cancelled"]\ntimeout_seconds = 2\n'
        ),
        environ={"SMSLEDGER_ALERT_SECRET": "hmac-secret-42"},
    )

    assert config.alerts.events == ("needs_attention", "cancelled")
    assert config.alerts.secret == "hmac-secret-42"
    assert config.alerts.timeout_seconds == 2.0
    text = json.dumps(config.redacted()) + repr(config)
    assert "hmac-secret-42" not in text
    assert "s3cr3t-path" not in text
    assert config.redacted()["alerts"]["webhook_url"] == "https://hooks.example/..."


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[alerts]\nevents = ["needs_attention", "oops"]', "unknown event 'oops'"),
        ('[alerts]\nevents = "needs_attention"', "alerts.events in"),
        ('[alerts]\nwebhook_url = "ftp://x"', "must start with http"),
        ('[metrics]\nlisten = "9464"', "not HOST:PORT"),
        ("[scheduler]\nmax_clock_skew_seconds = 0", "must be positive"),
    ],
)
def test_bad_operations_keys_are_refused_naming_the_key(
    write_config: Callable[[str], Path], toml: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write_config(toml), environ={})


def test_the_reconcile_section_has_its_defaults_and_reads_its_keys(
    write_config: Callable[[str], Path],
) -> None:
    defaults = load_config(None, environ={}).reconcile
    assert (
        defaults.days,
        defaults.import_label,
        defaults.every_seconds,
        defaults.follow_up_seconds,
        defaults.recheck_seconds,
    ) == (10, "imported", 900.0, 600.0, 300.0)
    config = load_config(
        write_config('[reconcile]\ndays = 3\nimport_label = "panel"\nevery_seconds = 0'),
        environ={},
    )
    assert (config.reconcile.days, config.reconcile.import_label) == (3, "panel")
    assert config.reconcile.every_seconds == 0.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("days = 0", "reconcile.days"),
        ("days = 2.5", "reconcile.days"),
        ('import_label = "a\\nb"', "reconcile.import_label"),
        ("every_seconds = -1", "reconcile.every_seconds"),
        ("recheck_seconds = 0", "reconcile.recheck_seconds"),
        ("follow_up_seconds = nan", "reconcile.follow_up_seconds"),
    ],
)
def test_bad_reconcile_values_are_refused_naming_the_key(
    write_config: Callable[[str], Path], text: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write_config(f"[reconcile]\n{text}"), environ={})


def test_the_redacted_config_and_its_repr_hide_a_database_password_in_the_ledger_url(
    write_config: WriteConfig,
) -> None:
    config = load_config(
        write_config('[ledger]\nurl = "postgresql://smsledger:db-pass-4711@db.internal/ledger"'),
        environ={},
    )

    assert "db-pass-4711" not in json.dumps(config.redacted())
    assert "db-pass-4711" not in repr(config)


# -- relative paths ----------------------------------------------------------------------------


def test_relative_ledger_and_log_paths_are_read_relative_to_the_config_files_folder_not_the_cwd(
    tmp_path: Path, write_config: WriteConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config(
        '[ledger]\nurl = "sqlite:///data/ledger.db"\n[log]\npath = "logs/ledger.jsonl"\n',
        name="etc/smsledger.toml",
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    config = load_config(Path("..") / "etc" / "smsledger.toml", environ={})

    folder = path.parent.resolve()
    assert config.ledger.url == f"sqlite:///{folder / 'data' / 'ledger.db'}"
    assert config.log.path == str(folder / "logs" / "ledger.jsonl")


@pytest.mark.parametrize(
    ("url", "log_path"),
    [
        ("sqlite:////srv/ledger.db", "/var/log/smsledger.jsonl"),
        ("sqlite:///:memory:", "-"),
        ("postgresql://db.internal/ledger", "/var/log/smsledger.jsonl"),
    ],
    ids=["absolute", "memory-and-stderr", "not-a-file"],
)
def test_absolute_paths_memory_databases_stderr_and_server_urls_are_kept_as_written(
    write_config: WriteConfig, url: str, log_path: str
) -> None:
    config = load_config(
        write_config(f'[ledger]\nurl = "{url}"\n[log]\npath = "{log_path}"\n'), environ={}
    )

    assert (config.ledger.url, config.log.path) == (url, log_path)


def test_ledger_from_config_opens_the_ledger_next_to_the_config_file_with_its_margins(
    tmp_path: Path, write_config: WriteConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config(
        '[ledger]\nurl = "sqlite:///ledger.db"\nsynchronous = "NORMAL"\n'
        "[windows]\nwarn_before_seconds = 120\nrefuse_before_seconds = 30\n"
        '[log]\npath = "ledger.jsonl"\n',
        name="conf/smsledger.toml",
    )
    monkeypatch.chdir(tmp_path)

    with Ledger.from_config(path, setup_logging=False) as ledger:
        with ledger.store.engine.connect() as conn:
            synchronous = conn.exec_driver_sql("PRAGMA synchronous").scalar()

        assert (ledger.warn_before, ledger.refuse_before) == (
            timedelta(seconds=120),
            timedelta(seconds=30),
        )
        assert synchronous == 1
    assert (path.parent / "ledger.db").exists()
    assert not (tmp_path / "ledger.db").exists()
    assert not (path.parent / "ledger.jsonl").exists()


def test_ledger_from_config_logs_state_changes_to_the_configured_file(
    write_config: WriteConfig,
) -> None:
    path = write_config(
        '[ledger]\nurl = "sqlite:///ledger.db"\n[log]\npath = "ledger.jsonl"\n'
        f'[api]\nkey = "{KEY}"\nhash = "{HASH}"\n'
    )

    with Ledger.from_config(path, setup_logging=True) as ledger:
        ledger.register("o1", send_at=ledger.now() + timedelta(hours=1))
    structlog.get_logger("test").info("echo", detail=f"key={KEY} hash={HASH}")

    logged = [json.loads(line) for line in (path.parent / "ledger.jsonl").read_text().splitlines()]
    lines = [e for e in logged if e["event"] in ("order_state_changed", "echo")]
    assert [(e["event"], e.get("order_id")) for e in lines] == [
        ("order_state_changed", "o1"),
        ("echo", None),
    ]
    assert lines[1]["detail"] == "key=[REDACTED] hash=[REDACTED]"
