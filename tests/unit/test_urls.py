"""`display_url`: the one function that hides every secret part of a database URL."""

from __future__ import annotations

import pytest

from ledger._urls import display_url, is_secret_name
from ledger.config import Config, LedgerConfig


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("sqlite:///smsledger.db", "sqlite:///smsledger.db"),
        ("sqlite:////var/lib/a@b.db?mode=ro", "sqlite:////var/lib/a@b.db?mode=ro"),
        ("postgresql+psycopg://bob@db/x", "postgresql+psycopg://bob@db/x"),
        ("postgresql+psycopg://bob:pw-1@db:5432/x", "postgresql+psycopg://bob:***@db:5432/x"),
        ("postgresql://bob:@db/x", "postgresql://bob:***@db/x"),
        # An unescaped "@" or "/" in the password: hidden whole, whatever the parser makes of it.
        ("postgresql://bob:s3cr@t@db/x", "postgresql://bob:***@db/x"),
        ("postgresql://bob:a/b?c@db/x", "postgresql://bob:***@db/x"),
        (
            "postgresql+psycopg://bob@db/x?sslmode=require&password=pw-2&application_name=s",
            "postgresql+psycopg://bob@db/x?sslmode=require&password=***&application_name=s",
        ),
        (
            "postgresql://db/x?PassWord=a&passwd=b&pwd=c&sslpassword=d&api_key=e&secret=f"
            "&token=g&access_token=h&sslkey=i&options=-csearch_path%3Ds",
            "postgresql://db/x?PassWord=***&passwd=***&pwd=***&sslpassword=***&api_key=***"
            "&secret=***&token=***&access_token=***&sslkey=***&options=-csearch_path%3Ds",
        ),
        (
            "postgresql://u:p@db/x?password=q&password=r",
            "postgresql://u:***@db/x?password=***&password=***",
        ),
        ("postgresql://db/x?p%61ssword=q", "postgresql://db/x?p%61ssword=***"),
        ("postgresql://db/x?password=", "postgresql://db/x?password="),
        ("not a url: hunter2", "<unparsable database URL>"),
    ],
)
def test_display_url_hides_the_password_and_every_secret_named_query_value(
    url: str, shown: str
) -> None:
    assert display_url(url) == shown


@pytest.mark.parametrize(
    "name",
    [
        "password",
        "PASSWD",
        "pwd",
        "sslpassword",
        "api_key",
        "apiKey",
        "client_secret",
        "token",
        "access_token",
        "credentials",
    ],
)
def test_names_that_look_like_secrets_are_secret(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize("name", ["sslmode", "options", "application_name", "host", "mode"])
def test_ordinary_parameter_names_are_not_secret(name: str) -> None:
    assert not is_secret_name(name)


def test_the_config_repr_and_redacted_form_use_the_same_hiding() -> None:
    url = "postgresql+psycopg://bob:pw-3@db/x?password=pw-4&sslmode=require"
    config = Config(ledger=LedgerConfig(url=url))

    assert config.redacted()["ledger"]["url"] == display_url(url)
    assert repr(display_url(url)) in repr(config)
    assert "pw-3" not in repr(config) and "pw-4" not in repr(config)
