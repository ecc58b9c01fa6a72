"""`display_url`: a database URL with every secret part hidden, for messages, logs and `check`.

The one place that decides what of a ledger URL may be shown; the config's repr and redacted form,
the store's errors, the schema's log lines and the command all call it. It needs nothing but the
text, so every module of the ledger can import it without a cycle.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

__all__ = ["HIDDEN", "UNPARSABLE", "display_url", "is_secret_name"]

HIDDEN = "***"
UNPARSABLE = "<unparsable database URL>"
#: Query parameter names that carry a secret: password, passwd, pwd, sslpassword, api_key,
#: secret, token, access_token, ... (case-insensitive, anywhere in the name).
_SECRET_NAME = re.compile(r"pass|pwd|secret|key|token|credential", re.IGNORECASE)
#: ``user:password@`` as SQLAlchemy reads it: the password runs to the first ``@``.
_USERINFO = re.compile(r"(?P<user>[^:/]*):(?P<password>[^@]*)@")


def is_secret_name(name: str) -> bool:
    """Whether a URL query parameter of this name holds a secret."""
    return _SECRET_NAME.search(unquote(name)) is not None


def display_url(url: str) -> str:
    """`url` with the userinfo password and every secret-named query value replaced by ``***``.

    ``postgresql+psycopg://bob:pw@db/x?sslmode=require&password=pw`` shows as
    ``postgresql+psycopg://bob:***@db/x?sslmode=require&password=***``. A password holding an
    unescaped ``@`` is hidden whole too. Text that is not a URL is not shown at all: it might be
    a secret pasted into the wrong place.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme:
        return UNPARSABLE
    match = _USERINFO.match(rest)
    if match is not None:
        tail = rest[match.end() :]
        host_end = min((i for i in (tail.find("/"), tail.find("?")) if i >= 0), default=len(tail))
        # An unescaped "@" in the password: SQLAlchemy takes the rest for the host; hide it all.
        tail = tail[tail.rfind("@", 0, host_end) + 1 :]
        rest = f"{match['user']}:{HIDDEN}@{tail}"
    base, qmark, query = rest.partition("?")
    if qmark:
        query = "&".join(_hide_parameter(part) for part in query.split("&"))
    return f"{scheme}://{base}{qmark}{query}"


def _hide_parameter(part: str) -> str:
    name, eq, value = part.partition("=")
    return f"{name}={HIDDEN}" if eq and value and is_secret_name(name) else part
