"""deploy/ works as written: the unit passes `systemd-analyze verify`, the config loads with the
real loader, logrotate reads its snippet, the alert rules name series the daemon exports, and the
README's service section agrees with the files."""

from __future__ import annotations

import getpass
import grp
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import SMSLEDGER
from prometheus_client.parser import text_string_to_metric_families

from ledger import Ledger, OrderState, load_config
from ledger.config import parse_listen
from scheduler.daemon import Daemon
from scheduler.metrics import DaemonMetrics
from scheduler.provider.client import IletiMerkeziClient

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
UNIT = DEPLOY / "smsledger.service"
INSTALLED = "/opt/smsledger/bin/smsledger"


def unit_values(key: str) -> list[str]:
    return [
        line.split("=", 1)[1]
        for line in UNIT.read_text().splitlines()
        if line.startswith(f"{key}=")
    ]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify checks that ExecStart's program exists: point it at this test's installed script.
    assert SMSLEDGER is not None
    unit = tmp_path / "smsledger.service"
    unit.write_text(UNIT.read_text().replace(INSTALLED, SMSLEDGER))
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "SYSTEMD_LOG_LEVEL": "notice"},
    )
    assert done.returncode == 0, done.stderr
    assert "smsledger.service" not in done.stderr, done.stderr  # no warning about our unit
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--threshold=30", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if "--offline" in security.stderr:  # an older systemd: security only for loaded units
        return
    assert security.returncode == 0, security.stdout[-2000:] + security.stderr
    assert "Overall exposure level" in security.stdout


def test_the_unit_is_written_as_the_issue_asks() -> None:
    text = UNIT.read_text()
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            assert "#" not in line.split("=", 1)[1], f"inline comment: {line}"
    assert unit_values("Wants") == ["network-online.target"]
    assert unit_values("After") == ["network-online.target"]
    assert unit_values("StateDirectory") == ["smsledger"]
    assert unit_values("User") == ["smsledger"]
    assert unit_values("Restart") == ["on-failure"]
    for key in (
        "NoNewPrivileges",
        "ProtectSystem",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "RestrictAddressFamilies",
        "SystemCallFilter",
    ):
        assert unit_values(key), key
    # No provider call before the daemon starts: a provider outage cannot trip the start limit.
    pre = unit_values("ExecStartPre")
    assert pre == [f"{INSTALLED} migrate", f"{INSTALLED} check --offline"]


def test_check_offline_makes_no_provider_call(tmp_path: Path) -> None:
    assert SMSLEDGER is not None
    (tmp_path / "smsledger.toml").write_text(
        '[ledger]\nurl = "sqlite:///ledger.db"\n[api]\nbase_url = "http://127.0.0.1:9"\n'
        'key = "offline-key-4d2"\nhash = "offline-hash-8f1"\n[log]\npath = "log.jsonl"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SMSLEDGER_", "ILETIMERKEZI"))}
    run = [SMSLEDGER, "--config", str(tmp_path / "smsledger.toml")]
    migrated = subprocess.run([*run, "migrate"], env=env, capture_output=True, text=True,
                              timeout=60, check=False)  # fmt: skip
    offline = subprocess.run([*run, "check", "--offline"], env=env, capture_output=True,
                             text=True, timeout=60, check=False)  # fmt: skip
    logged = (tmp_path / "log.jsonl").read_text()
    online = subprocess.run([*run, "check"], env=env, capture_output=True, text=True,
                            timeout=60, check=False)  # fmt: skip
    assert migrated.returncode == 0, migrated.stderr
    assert offline.returncode == 0, offline.stderr
    assert "--offline" in offline.stdout
    assert "provider_call" not in logged
    assert online.returncode == 1  # nothing listens on port 9: the online check calls it


def test_the_deploy_config_loads_with_the_real_loader() -> None:
    config = load_config(DEPLOY / "smsledger.toml")
    assert config.ledger.url == "sqlite:////var/lib/smsledger/smsledger.db"
    assert Path(config.log.path).is_absolute()
    assert parse_listen(config.metrics.listen) == ("127.0.0.1", 9464)
    assert config.api.key == ""  # credentials come from the environment file
    # The unit's directories hold what the config names.
    assert "/var/lib/smsledger/" in config.ledger.url
    assert config.log.path.startswith("/var/log/smsledger/")
    assert unit_values("LogsDirectory") == ["smsledger"]
    assert unit_values("Environment") == ["SMSLEDGER_CONFIG=/etc/smsledger/smsledger.toml"]


@pytest.mark.skipif(shutil.which("logrotate") is None, reason="no logrotate here")
def test_logrotate_reads_the_snippet_and_it_names_the_configs_log(tmp_path: Path) -> None:
    config = load_config(DEPLOY / "smsledger.toml")
    text = (DEPLOY / "logrotate").read_text()
    assert f"{config.log.path} {{" in text
    # This machine has no smsledger user: the test's own user and group stand in.
    me, group = getpass.getuser(), grp.getgrgid(os.getgid()).gr_name
    snippet = tmp_path / "smsledger"
    snippet.write_text(text.replace("smsledger smsledger", f"{me} {group}"))
    done = subprocess.run(
        ["logrotate", "--debug", "--state", str(tmp_path / "state"), str(snippet)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "error" not in done.stderr.lower(), done.stderr


def test_the_alert_rules_name_only_series_the_daemon_exports(
    tmp_ledger: Ledger, client: IletiMerkeziClient
) -> None:
    rules = (DEPLOY / "prometheus-rules.yml").read_text()
    names = set(re.findall(r"\bsmsledger_[a-z_]+\b", rules))
    daemon = Daemon(tmp_ledger, client)
    daemon.run_pass()
    daemon.skew._samples.append(0.0)  # as after one provider answer
    exposition = DaemonMetrics(daemon).exposition().decode()
    exported = {s.name for f in text_string_to_metric_families(exposition) for s in f.samples}
    assert names
    assert names <= exported, names - exported
    assert 'state="needs_attention"' in rules
    assert OrderState.NEEDS_ATTENTION.value == "needs_attention"
    for alert in ("NeedsAttention", "NoPass", "CredentialsRejected", "ClockSkew"):
        assert f"alert: Smsledger{alert}" in rules


def test_the_alert_rules_are_yaml() -> None:
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed")
    loaded = yaml.safe_load((DEPLOY / "prometheus-rules.yml").read_text())
    assert len(loaded["groups"][0]["rules"]) == 5


def test_the_readme_service_section_points_to_deploy_and_agrees_with_it() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Running it as a service", 1)[1].split("\n## ", 1)[0]
    for name in ("smsledger.service", "smsledger.toml", "logrotate", "prometheus-rules.yml"):
        assert f"deploy/{name}" in section, name
    assert "check --offline" in section
    assert "copytruncate" not in section  # the daemon reopens its log on SIGHUP instead
    assert "ExecStartPre=/opt/smsledger/bin/smsledger check\n" not in section
