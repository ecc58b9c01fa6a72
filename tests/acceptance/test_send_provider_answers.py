"""The real `smsledger send` against the sandbox: the provider's zone, and an unreadable answer.

`sendDateTime` is read by the provider in Istanbul time, whatever `timezone` the config names;
the config's zone only reads people's input and shows output. The sandbox reads `sendDateTime` in
its own zone (Europe/Istanbul by default) and its truth records the instant it will send at.
"""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from helpers import CONFIG as BASE_CONFIG
from helpers import SMSLEDGER, clean_env, needs_smsledger

from ledger import Ledger
from scheduler.provider.sandbox import DEFAULT_HASH, DEFAULT_KEY, Faults, Sandbox

pytestmark = needs_smsledger

CONFIG = (
    BASE_CONFIG
    + """\
[api]
base_url = "{url}"
key = "{key}"
hash = "{hash}"
"""
)


def folder(root: Path, zone: str, sandbox: Sandbox) -> Path:
    """A work folder whose config names `zone` and points at the sandbox."""
    work = root / zone.replace("/", "_")
    work.mkdir()
    (work / "smsledger.toml").write_text(
        CONFIG.format(zone=zone, url=sandbox.url, key=DEFAULT_KEY, hash=DEFAULT_HASH)
    )
    return work


def send(work: Path, at: str) -> subprocess.CompletedProcess[str]:
    assert SMSLEDGER is not None
    return subprocess.run(
        [SMSLEDGER, "send", "--sender", "ACME", "--to", "905551112233", "--text", "hi", "--at", at],
        cwd=work,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def local_time_ahead(zone: str, hours: int) -> tuple[str, datetime]:
    """A whole minute `hours` ahead, written as a naive local time of `zone`, and its instant."""
    instant = (datetime.now(UTC) + timedelta(hours=hours)).replace(second=0, microsecond=0)
    return instant.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%dT%H:%M"), instant


@pytest.mark.parametrize("zones", [("America/New_York", "Asia/Tokyo")])
def test_the_provider_sends_at_the_ledger_time_whatever_the_configured_zone(
    tmp_path: Path, sandbox: Sandbox, zones: tuple[str, str]
) -> None:
    """A zone west and a zone east of Istanbul: the sandbox's send time is the ledger's."""
    asked = {zone: local_time_ahead(zone, 3) for zone in zones}
    works = {zone: folder(tmp_path, zone, sandbox) for zone in zones}
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = dict(zip(zones, pool.map(lambda z: send(works[z], asked[z][0]), zones), strict=True))

    truth = sandbox.truth()["orders"]
    for zone in zones:
        result = done[zone]
        assert result.returncode == 0, result.stderr
        order_id = result.stdout.strip()
        at_provider = datetime.fromisoformat(truth[order_id]["send_at"])
        assert at_provider == asked[zone][1], zone
        with Ledger(f"sqlite:///{works[zone] / 'ledger.db'}") as ledger:
            assert ledger.get(order_id).send_at == asked[zone][1], zone


def test_a_send_whose_answer_is_nested_too_deep_says_to_check_the_panel(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """The order exists at the provider; the command must not call it an internal error."""
    sandbox.set_faults(Faults(nested_next={"send-sms": 1}))
    at, _ = local_time_ahead("Europe/Istanbul", 2)

    result = send(folder(tmp_path, "Europe/Istanbul", sandbox), at)

    assert result.returncode == 1
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("smsledger: error: ")
    assert "check the provider's panel before sending again" in line
    assert "internal error" not in line
    assert len(sandbox.truth()["orders"]) == 1
