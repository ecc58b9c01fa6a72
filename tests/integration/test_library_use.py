"""Using smsledger from an application: quiet by default, the application's logging untouched,
its events delivered to the application's own handlers, and the README's example runs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_python(code: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter, the way an application process would."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("SMSLEDGER_", "PYTHON"))}
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


QUIET_APP = """
import sys
from datetime import timedelta

from ledger import CancelNotPossible, CancelRefused, Ledger, OrderState
from scheduler.daemon import Daemon
from scheduler.provider.client import IletiMerkeziClient
from scheduler.provider.sandbox import DEFAULT_HASH, DEFAULT_KEY, Sandbox

with Sandbox() as sandbox, Ledger.from_config("smsledger.toml") as book:
    now = book.now()
    book.register("far", send_at=now + timedelta(hours=2))
    book.register("close", send_at=now + timedelta(minutes=10))  # a warning event
    book.register("late", send_at=now + timedelta(minutes=2))
    book.request_cancel("far")
    book.request_cancel("close")
    try:
        book.request_cancel("late")
    except CancelRefused:
        pass
    try:
        book.request_cancel("late")  # asked again: still refused
    except CancelNotPossible:
        pass
    assert book.get("far").state is OrderState.CANCEL_REQUESTED
    assert book.history("close")
    assert len(book.orders()) == 3
    with IletiMerkeziClient(sandbox.url, DEFAULT_KEY, DEFAULT_HASH) as client:
        Daemon(book, client, cancel_settle_seconds=0).run_once(30)  # provider calls, not-found
"""


def write_config(tmp_path: Path) -> None:
    (tmp_path / "smsledger.toml").write_text(
        textwrap.dedent(f"""
        [ledger]
        url = "sqlite:///{tmp_path / "ledger.db"}"
        [log]
        path = "{tmp_path / "smsledger.log.jsonl"}"
        level = "debug"
        """),
        encoding="utf-8",
    )


def test_registering_cancelling_and_reading_with_default_settings_prints_nothing_at_all(
    tmp_path: Path,
) -> None:
    write_config(tmp_path)

    done = run_python(QUIET_APP, tmp_path)

    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert not (tmp_path / "smsledger.log.jsonl").exists()  # from_config set up no logging


APP_WITH_ITS_OWN_LOGGING = """
import json
import logging
import sys
from datetime import timedelta

import structlog

from ledger import Ledger


class Keep(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record)


keep = Keep()
logging.basicConfig(level=logging.INFO, handlers=[keep])
use_structlog = sys.argv[1] == "structlog"
if use_structlog:
    structlog.configure(
        processors=[structlog.stdlib.add_log_level, structlog.stdlib.render_to_log_kwargs],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
    )
before = (structlog.get_config(), structlog.is_configured(), logging.getLogger().handlers[:],
          logging.getLogger().level)

with Ledger.from_config("smsledger.toml") as book:
    book.register("o1", send_at=book.now() + timedelta(hours=1))
    book.request_cancel("o1")

after = (structlog.get_config(), structlog.is_configured(), logging.getLogger().handlers[:],
         logging.getLogger().level)
ours = [r for r in keep.records if r.name.startswith("smsledger.")]
changes = [r for r in ours if "order_state_changed" in r.getMessage()]
fields = [vars(r).get("smsledger", vars(r)) for r in changes]  # logging: record.smsledger
print(json.dumps({
    "untouched": before == after,
    "names": sorted({r.name for r in ours}),
    "messages": [r.getMessage() for r in changes],
    "to_states": [f["to_state"] for f in fields],
}))
"""


def _own_logging(tmp_path: Path, mode: str) -> dict[str, object]:
    write_config(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", APP_WITH_ITS_OWN_LOGGING, mode],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (done.returncode, done.stderr) == (0, "")
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_an_apps_structlog_pipeline_receives_the_events_and_its_configuration_is_untouched(
    tmp_path: Path,
) -> None:
    result = _own_logging(tmp_path, "structlog")

    assert result["untouched"] is True
    assert result["names"] == ["smsledger.ledger"]
    assert result["messages"] == ["order_state_changed", "order_state_changed"]
    assert result["to_states"] == ["scheduled", "cancel_requested"]
    assert not (tmp_path / "smsledger.log.jsonl").exists()


def test_an_app_with_only_stdlib_logging_receives_the_events_as_records_with_their_fields(
    tmp_path: Path,
) -> None:
    result = _own_logging(tmp_path, "logging")

    assert result["untouched"] is True
    assert result["names"] == ["smsledger.ledger"]
    messages = result["messages"]
    assert isinstance(messages, list)
    assert [m.split()[0] for m in messages] == [
        "event=order_state_changed",
        "event=order_state_changed",
    ]
    assert "to_state=cancel_requested" in messages[1]
    assert result["to_states"] == ["scheduled", "cancel_requested"]


def test_from_config_with_setup_logging_writes_the_json_lines_file(tmp_path: Path) -> None:
    write_config(tmp_path)
    code = (
        "from datetime import timedelta\nfrom ledger import Ledger\n"
        "with Ledger.from_config('smsledger.toml', setup_logging=True) as book:\n"
        "    book.register('o1', send_at=book.now() + timedelta(hours=1))\n"
    )

    done = run_python(code, tmp_path)

    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    lines = (tmp_path / "smsledger.log.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["event"] for line in lines][-1] == "order_state_changed"


# -- the README's example ----------------------------------------------------------------------


def readme_example() -> tuple[str, list[str]]:
    """The README's application example and the lines the README says it prints."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Using smsledger from your application", 1)[1].split("\n## ", 1)[0]
    [code] = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    [printed] = re.findall(r"It prints:\n\n```text\n(.*?)```", section, flags=re.DOTALL)
    return code, printed.splitlines()


def test_the_readme_application_example_runs_exactly_as_written_and_prints_what_it_says(
    tmp_path: Path,
) -> None:
    code, printed = readme_example()

    done = run_python(code, tmp_path, SMSLEDGER_EXAMPLE_LEDGER=f"sqlite:///{tmp_path / 'app.db'}")

    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.splitlines() == printed
    assert (tmp_path / "app.db").exists()


def test_the_readme_application_example_runs_without_the_variable_too(tmp_path: Path) -> None:
    code, printed = readme_example()

    done = run_python(code, tmp_path)

    assert (done.returncode, done.stderr, done.stdout.splitlines()) == (0, "", printed)
