"""Where the configuration file and the Valt password come from.

Kept apart from parsing: these are the only configuration functions that read
the environment or secret files.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ingestd.config import DEFAULT_CONFIG_PATH, ValtConfig
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


def config_path_from(arg: str | None, environ: Mapping[str, str]) -> Path:
    """The config file: the ``-c`` value, else ``$INGESTD_CONFIG``, else DEFAULT_CONFIG_PATH."""
    if arg:
        return Path(arg)
    from_env = environ.get("INGESTD_CONFIG")
    return Path(from_env) if from_env else DEFAULT_CONFIG_PATH
