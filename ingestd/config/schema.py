"""The configuration's typed, frozen sections and their defaults.

The YAML key names are a contract (design.md, "Configuration"). The dataclasses
are plain values: parsing lives in ``config/sections.py`` (and ``record.py``),
reading the file in ``config/load.py``, secrets in ``config/credentials.py``.
"""

from __future__ import annotations

import datetime
import socket
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_EXCLUDE",
    "DEFAULT_INCLUDE",
    "MIN_CHUNK_SIZE",
    "AfterUploadConfig",
    "AlertsConfig",
    "BandwidthLimit",
    "BandwidthWindow",
    "Config",
    "FrozenMapping",
    "LedgerConfig",
    "LogConfig",
    "RecordConfig",
    "RuleConfig",
    "ShareConfig",
    "StatusConfig",
    "UploadConfig",
    "ValtConfig",
    "WatchConfig",
]

DEFAULT_CONFIG_PATH = Path("/etc/ingestd/config.yaml")
MIN_CHUNK_SIZE = 64 * 1024
DEFAULT_INCLUDE = ("*.mp4", "*.mov", "*.mkv", "*.avi", "*.m4v", "*.ts", "*.webm")
DEFAULT_EXCLUDE = ("*.part", "*.tmp", "*.crdownload", ".*", "~*")


class FrozenMapping(Mapping[str, str]):
    """A read-only, hashable ``str -> str`` mapping, so that frozen configs stay hashable."""

    __slots__ = ("_data",)

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._data: dict[str, str] = dict(items)

    def __getitem__(self, key: str) -> str:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(frozenset(self._data.items()))

    def __repr__(self) -> str:
        return f"FrozenMapping({self._data!r})"


@dataclass(frozen=True, slots=True)
class ValtConfig:
    url: str
    username: str
    password_env: str = "INGESTD_VALT_PASSWORD"
    password_file: Path | None = None
    password: str | None = field(default=None, repr=False)
    credential: str = "valt-password"
    verify_tls: bool = True
    ca_file: Path | None = None
    timeout: float = 30.0


@dataclass(frozen=True, slots=True)
class WatchConfig:
    paths: tuple[Path, ...]
    recursive: bool = True
    include: tuple[str, ...] = DEFAULT_INCLUDE
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    follow_symlinks: bool = False
    settle: float = 10.0
    rescan_interval: float = 300.0
    force_polling: bool = False
    done_marker: str | None = None
    check_open_writers: bool = True
    check_container: bool = True
    min_free: int = 5 * 1024**3
    require_mount: bool = False
    # The ``{path, name}`` form's names, by index in ``paths`` (None: no name given).
    names: tuple[str | None, ...] = ()

    def label(self, index: int) -> str:
        """What metrics, health and alerts call folder ``index``: its name where one is set,
        else ``watch.paths[N]``; never the path, which can carry a person's or room's name."""
        name = self.names[index] if index < len(self.names) else None
        return name if name is not None else f"watch.paths[{index}]"


@dataclass(frozen=True, slots=True)
class BandwidthWindow:
    """``rate`` bytes/s (None: unlimited) from ``start`` until ``end``, local wall time."""

    start: datetime.time
    end: datetime.time
    rate: int | None

    def contains(self, moment: datetime.time) -> bool:
        """Whether ``moment`` falls in [start, end).

        An end before the start crosses midnight; start == end (00:00-24:00) is all day.
        """
        if self.start < self.end:
            return self.start <= moment < self.end
        return moment >= self.start or moment < self.end


@dataclass(frozen=True, slots=True)
class BandwidthLimit:
    """Upload rate limit in bytes/s shared by all workers; None means unlimited."""

    default: int | None = None
    windows: tuple[BandwidthWindow, ...] = ()

    def rate_at(self, now: datetime.datetime) -> int | None:
        """The limit at local wall time ``now``: the first window holding it, else the default."""
        moment = now.time().replace(tzinfo=None)
        for window in self.windows:
            if window.contains(moment):
                return window.rate
        return self.default


@dataclass(frozen=True, slots=True)
class UploadConfig:
    workers: int = 2
    chunk_size: int = 8 * 1024**2
    bandwidth_limit: BandwidthLimit | None = None
    max_attempts: int = 20
    backoff_initial: float = 1.0
    backoff_max: float = 300.0
    confirm: Literal["ready", "uploaded"] = "ready"
    confirm_timeout: float = 6 * 3600.0
    drain_timeout: float = 30.0


@dataclass(frozen=True, slots=True)
class ShareConfig:
    """Valt user/group ids (int) or names (str, resolved against the server)."""

    users: tuple[int | str, ...] = ()
    groups: tuple[int | str, ...] = ()


@dataclass(frozen=True, slots=True)
class RuleConfig:
    """Overrides for files whose relative path matches ``match``; None keeps the default."""

    match: str
    name: str | None = None
    template: Mapping[str, str] | None = None
    share: ShareConfig | None = None


@dataclass(frozen=True, slots=True)
class RecordConfig:
    name: str = "{stem}"
    pattern: str | None = None
    template: Mapping[str, str] = FrozenMapping()
    template_id: int | None = None
    share: ShareConfig = ShareConfig()
    sidecar: bool = True
    rules: tuple[RuleConfig, ...] = ()


@dataclass(frozen=True, slots=True)
class AfterUploadConfig:
    action: Literal["keep", "move", "delete"] = "keep"
    move_to: Path | None = None
    failed_to: Path | None = None
    keep_for: float | None = None


@dataclass(frozen=True, slots=True)
class LedgerConfig:
    path: Path = Path("/var/lib/ingestd/ledger.db")
    backups: int = 7
    # Seconds after done that a done job whose source is gone is pruned (None: kept for ever).
    forget_after: float | None = None
    # A PostgreSQL ledger shared by several daemons (libpq URL, never with a password in
    # it; None: SQLite at ``path``). Kept out of reprs all the same: its query string may
    # hold other connection details.
    url: str | None = field(default=None, repr=False)
    password_file: Path | None = None  # or the systemd credential ledger-password
    # This daemon's name among the nodes of a shared ledger.
    node: str = field(default_factory=socket.gethostname)
    # Seconds a claimed job stays this node's without a renewal (shared ledger only).
    lease: float = 60.0

    @property
    def shared(self) -> bool:
        """Whether the ledger is a shared (PostgreSQL) one rather than SQLite at ``path``."""
        return self.url is not None


@dataclass(frozen=True, slots=True)
class LogConfig:
    format: Literal["json", "console", "auto"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"
    redact_paths: bool = False


@dataclass(frozen=True, slots=True)
class StatusConfig:
    listen: tuple[str, int] | None = ("127.0.0.1", 9465)
    token_file: Path | None = None  # or the systemd credential status-token


@dataclass(frozen=True, slots=True)
class AlertsConfig:
    # A webhook URL often is the secret itself (Slack, Teams): keep it out of reprs.
    webhook: str | None = field(default=None, repr=False)
    backlog_age: float = 3600.0


@dataclass(frozen=True, slots=True)
class Config:
    valt: ValtConfig
    watch: WatchConfig
    upload: UploadConfig = UploadConfig()
    record: RecordConfig = RecordConfig()
    after_upload: AfterUploadConfig = AfterUploadConfig()
    ledger: LedgerConfig = LedgerConfig()
    log: LogConfig = LogConfig()
    status: StatusConfig = StatusConfig()
    alerts: AlertsConfig = AlertsConfig()
    source: Path | None = None
