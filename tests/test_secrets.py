"""No password, no token, no ``access_token=`` anywhere: output of every command, and the ledger.

A whole run at debug level against a faulty server (HTML 500s, dropped
connections, expiring tokens, hung requests cut off by a short timeout), plus
a wrong password for ``check`` and for ``run --once``. Every byte that the
processes print and the ledger holds is searched for any 8-character piece of
the passwords and of every token the fake server issued.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from conftest import (
    PASSWORD,
    KiB,
    MiB,
    ingestd_env,
    issued_tokens,
    random_file,
    run_cli,
    server_videos,
    write_config,
)

from ingestd.fake_valt import FakeValtThread
from ingestd.logs import secrets_in

WRONG_PASSWORD = "Wr0ng-Guess-pa55word-Q"
NO_FAULTS = {"fail_rate": 0.0, "drop_rate": 0.0, "hang_rate": 0.0, "token_ttl": None}


def _output(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + "\n" + result.stderr


def _events(text: str) -> list[dict[str, object]]:
    events = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    return events


def test_no_secret_in_output_or_ledger(
    tmp_path: Path, server: FakeValtThread, export: Path
) -> None:
    sizes = {"alpha": 700 * KiB, "beta": 1 * MiB + 3, "gamma": 1536 * KiB + 5}
    for n, (name, size) in enumerate(sizes.items()):
        random_file(export / f"{name}.mkv", size, seed=n)
    config = write_config(
        tmp_path,
        server.url,
        valt={"timeout": "1s"},
        log={"level": "debug"},
        upload={"workers": 2, "max_attempts": 50},
    )
    wrong = ingestd_env(INGESTD_VALT_PASSWORD=WRONG_PASSWORD)
    outputs: list[str] = []

    # 1. A wrong password: `check` says so without naming it.
    checked = run_cli("check", "-c", str(config), env=wrong)
    outputs.append(_output(checked))
    assert checked.returncode == 1, _output(checked)
    assert "credentials" in checked.stdout

    # 2. The real run, at debug level, against a server that misbehaves in every way.
    server.set_faults(fail_rate=0.2, drop_rate=0.1, token_ttl=5, hang_rate=0.05, seed=11)
    ran = run_cli("run", "-c", str(config), "--once", "--max-wait", "20s")
    outputs.append(_output(ran))
    assert ran.returncode == 0, _output(ran)[-4000:]
    held = server_videos(server)
    assert sorted(held) == sorted(sizes)

    # 3. A wrong password for a run with a new file: it stops, naming no secret.
    server.set_faults(**NO_FAULTS)
    random_file(export / "delta.mkv", 300 * KiB, seed=9)
    refused = run_cli("run", "-c", str(config), "--once", "--max-wait", "20s", env=wrong)
    outputs.append(_output(refused))
    assert refused.returncode == 1, _output(refused)
    assert "refused the credentials" in refused.stderr

    # 4. What an operator looks at afterwards.
    for args in (("status",), ("status", "--json")):
        status = run_cli(*args, "-c", str(config))
        assert status.returncode == 0, status.stderr
        outputs.append(_output(status))
    assert "delta.mkv" in outputs[-1]

    ledger_bytes = b""
    for suffix in ("", "-wal", "-shm", "-journal"):
        part = tmp_path / f"ledger.db{suffix}"
        if part.exists():
            ledger_bytes += part.read_bytes()
    assert ledger_bytes

    text = "\n".join(outputs) + "\n" + ledger_bytes.decode("latin-1")
    tokens = server.call(issued_tokens)
    snapshot = server.snapshot()

    # The search is not vacuous: tokens were issued (and expired), faults and retries
    # happened, the wrong password was refused, and debug lines were written.
    assert len(tokens) >= 2
    assert all(len(token) == 32 for token in tokens)
    assert snapshot["faults_injected"].get("token_expired", 0) >= 1
    assert snapshot["faults_injected"].get("fail", 0) >= 1
    assert snapshot["login_failures"] == 2  # once per wrong-password process, no hammering
    events = _events(text)
    names = {event.get("event") for event in events}
    assert {"upload.retry", "auth.failed", "auth.expired", "job.done"} <= names, names
    assert any(event.get("level") == "debug" for event in events)  # log.level took effect

    assert "access_token=" not in text
    assert secrets_in(text, [PASSWORD, WRONG_PASSWORD]) == []
    assert secrets_in(text, sorted(tokens)) == []


def test_scrub_list_keeps_passwords_and_only_the_newest_tokens() -> None:
    """A year of logins (a token every 8 hours) must not grow what each log line is searched for."""
    from ingestd import logs

    password = "Long-Lived-Pa55word-For-Scrub"
    logs.register_secret(password)
    tokens = [f"{n:032x}" for n in range(1, 1200)]
    for token in tokens:
        logs.register_secret(token, token=True)
    assert len(logs._SECRETS_ORDER) <= len(logs._SECRETS) + logs.RECENT_TOKENS
    assert password in logs._SECRETS_ORDER
    newest = tokens[-1]
    assert logs.redact_text(f"pw {password} tok {newest}") == "pw [redacted] tok [redacted]"
