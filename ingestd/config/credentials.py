"""Where the configuration file, the Valt password, the status token and the shared ledger's
password come from.

Kept apart from parsing: these are the only configuration functions that read
the environment or secret files.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from ingestd.config.schema import DEFAULT_CONFIG_PATH, LedgerConfig, StatusConfig, ValtConfig
from ingestd.errors import ConfigError


def _read_secret(path: Path, key: str) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(key, f"cannot read {path}: {reason}") from None
    text = text.removesuffix("\n").removesuffix("\r")
    if not text:
        raise ConfigError(key, f"{path} is empty")
    return text


def resolve_password(valt: ValtConfig, environ: Mapping[str, str]) -> str:
    """The Valt password: systemd credential, then password_file, then password_env, then password.

    An explicitly configured password_file that cannot be read is an error, not a fall-through.
    """
    credentials = environ.get("CREDENTIALS_DIRECTORY")
    if credentials:
        candidate = Path(credentials) / valt.credential
        if candidate.is_file():
            return _read_secret(candidate, "valt.credential")
    if valt.password_file is not None:
        return _read_secret(valt.password_file, "valt.password_file")
    from_env = environ.get(valt.password_env)
    if from_env:
        return from_env
    if valt.password:
        return valt.password
    state = "is empty" if from_env == "" else "is not set"
    raise ConfigError(
        "valt.password_env",
        f"environment variable {valt.password_env} {state};"
        " set it, or set valt.password_file or valt.credential",
    )


STATUS_CREDENTIAL = "status-token"
MIN_TOKEN_LENGTH = 16


def resolve_status_token(status: StatusConfig, environ: Mapping[str, str]) -> str | None:
    """The status port's token: the systemd credential status-token, then status.token_file.

    None when neither is there: the port then answers anyone who reaches it. The
    token's value never appears in a message.
    """
    credentials = environ.get("CREDENTIALS_DIRECTORY")
    candidate = Path(credentials) / STATUS_CREDENTIAL if credentials else None
    if candidate is not None and candidate.is_file():
        source = candidate
    elif status.token_file is not None:
        source = status.token_file
    else:
        return None
    key = "status.token_file"
    token = _read_secret(source, key)
    # Sent in an HTTP header, as Bearer or Basic: visible ASCII only, and too long to guess.
    if not all("!" <= char <= "~" for char in token):
        raise ConfigError(key, f"the token in {source} must be printable ASCII without spaces")
    if len(token) < MIN_TOKEN_LENGTH:
        raise ConfigError(
            key,
            f"the token in {source} has {len(token)} characters; use at least"
            f" {MIN_TOKEN_LENGTH} (e.g. `openssl rand -hex 32`)",
        )
    return token


LEDGER_CREDENTIAL = "ledger-password"


def ledger_password(ledger: LedgerConfig, environ: Mapping[str, str] = os.environ) -> str | None:
    """A shared ledger's password: ledger.password_file, then the systemd credential
    ledger-password.

    None when neither is there: libpq then looks for PGPASSWORD, PGPASSFILE (~/.pgpass)
    and its service file itself. A configured file that cannot be read is an error, not a
    fall-through; the password's value never appears in a message.
    """
    key = "ledger.password_file"
    if ledger.password_file is not None:
        return _read_secret(ledger.password_file, key)
    credentials = environ.get("CREDENTIALS_DIRECTORY")
    if credentials:
        candidate = Path(credentials) / LEDGER_CREDENTIAL
        if candidate.is_file():
            return _read_secret(candidate, key)
    return None


def config_path_from(arg: str | None, environ: Mapping[str, str]) -> Path:
    """The config file: the ``-c`` value, else ``$INGESTD_CONFIG``, else DEFAULT_CONFIG_PATH."""
    if arg:
        return Path(arg)
    from_env = environ.get("INGESTD_CONFIG")
    return Path(from_env) if from_env else DEFAULT_CONFIG_PATH
