"""A real daemon and a real logrotate run of deploy/logrotate: the file is moved, the daemon
gets SIGHUP (what `systemctl reload` sends) and reopens it; every line lands in one file or the
other."""

from __future__ import annotations

import getpass
import grp
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from helpers import SMSLEDGER, clean_env, needs_smsledger, wait_for

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    needs_smsledger,
    pytest.mark.skipif(shutil.which("logrotate") is None, reason="no logrotate here"),
]

CONFIG = """\
[ledger]
url = "sqlite:///ledger.db"
synchronous = "NORMAL"
[api]
base_url = "http://127.0.0.1:9"
key = "reopen-key-7c1e"
hash = "reopen-hash-93ab"
[scheduler]
poll_seconds = 0.2
[log]
path = "{log}"
"""


def events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_logrotate_and_sighup_move_the_log_without_losing_a_line(tmp_path: Path) -> None:
    assert SMSLEDGER is not None
    log = tmp_path / "smsledger.log.jsonl"
    (tmp_path / "smsledger.toml").write_text(CONFIG.format(log=log))
    daemon = subprocess.Popen(
        [SMSLEDGER, "run"],
        cwd=tmp_path,
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: any(e["event"] == "daemon_started" for e in events(log)), timeout=60,
                 what="the daemon's first line")  # fmt: skip
        # deploy/logrotate with this test's file, user and group; its postrotate's
        # `systemctl reload` becomes the SIGHUP that reload sends.
        me, group = getpass.getuser(), grp.getgrgid(os.getgid()).gr_name
        snippet = (REPO / "deploy" / "logrotate").read_text()
        snippet = snippet.replace("/var/log/smsledger/smsledger.log.jsonl", str(log))
        snippet = snippet.replace("smsledger smsledger", f"{me} {group}")
        snippet = snippet.replace(
            "/bin/systemctl reload smsledger.service", f"/bin/kill -HUP {daemon.pid}"
        )
        conf = tmp_path / "logrotate.conf"
        conf.write_text(snippet)
        done = subprocess.run(
            ["logrotate", "--force", "--state", str(tmp_path / "state"), str(conf)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        rotated = tmp_path / "smsledger.log.jsonl.1"
        wait_for(lambda: any(e["event"] == "log_reopened" for e in events(log)), timeout=30,
                 what="log_reopened in the new file")  # fmt: skip
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(timeout=10)
    before, after = events(rotated), events(log)
    assert "daemon_started" in [e["event"] for e in before]
    assert all(e["event"] != "log_reopened" for e in before)
    assert after[0]["event"] == "log_reopened"
    assert after[-1]["event"] == "daemon_stopped"  # written after the rotation, to the new file
