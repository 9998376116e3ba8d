"""Exceptions shared by every layer. Imports only the shared ground below it (logs), so no cycles.

Messages never carry a URL with its query string, a token or a password. A
message may quote what a server said (which can quote the request URL, token
and all): :class:`IngestdError` scrubs every text it is given, here, once, so
that no output path (the ledger, ``status``, ``NAME.error.txt``, the terminal)
can forget to.
"""

from __future__ import annotations

from ingestd.logs import redact_text


class IngestdError(Exception):
    """Base of every error ingestd raises on purpose; its text arguments are scrubbed."""

    def __init__(self, *args: object) -> None:
        super().__init__(*(redact_text(arg) if isinstance(arg, str) else arg for arg in args))


class ConfigError(IngestdError):
    """A configuration value is wrong. ``key`` is the dotted path, e.g. ``upload.chunk_size``."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}" if key else message)


class UsageError(IngestdError):
    """The command line is wrong (exit 2)."""


class LedgerError(IngestdError):
    """The ledger cannot be opened, read or written."""


class LedgerDamaged(LedgerError):
    """The ledger file is present but fails ``PRAGMA quick_check`` (or is no SQLite file).

    The daemon must stop here rather than start afresh: an empty ledger would
    upload every file again. ``config_file`` (filled in by the command line
    when known) makes the advice name the exact command to run.
    """

    def __init__(
        self, path: object, problem: str, *, what: str = "is damaged", config_file: object = None
    ) -> None:
        self.path = path
        self.problem = problem
        self.what = what
        self.config_file = config_file
        super().__init__(path, problem)

    def __str__(self) -> str:
        config = self.config_file or "FILE"
        return (
            f"the ledger {self.path} {self.what} ({self.problem}); nothing was started or "
            f"changed. Run `ingestd ledger restore -c {config}` to put the newest good backup "
            "in place (the damaged file is kept aside)"
        )


class LedgerUnwritable(LedgerError):
    """A ledger write failed: disk full, read-only file system or folder, or an I/O error.

    Not a job's fault and not a bug: nothing committed is lost, the job keeps
    its last committed state, and new work waits until the ledger takes writes.
    """


class LedgerBusy(IngestdError):
    """Another process holds the ledger's lock (a second daemon, or a restore)."""


class ValtError(IngestdError):
    """A request to the Valt server failed.

    ``status`` is the HTTP status (None for connection-level failures) and
    ``reason`` a short stable code used in the ledger, metrics and logs.
    """

    def __init__(self, message: str, *, status: int | None = None, reason: str = "") -> None:
        self.status = status
        self.reason = reason or (f"http_{status}" if status else "connection")
        super().__init__(message)


class RetryableError(ValtError):
    """Worth trying again later: connection errors, timeouts, 408, 429, 5xx."""


class ServerUnreachable(RetryableError):
    """The server is down: a request failed for want of it, and a probe failed too.

    Not a job failure: every server call waits (one probe at a time, with capped
    backoff), jobs keep their state and no attempt counts. ``status`` and ``reason``
    are the failed request's, so callers that only retry see what they always saw.
    """


class PermanentError(ValtError):
    """Trying again will not help: other 4xx, malformed answers."""


class AuthFailed(ValtError):
    """``login`` itself was refused: the credentials are wrong.

    Not a job failure: the daemon stops server work and retries login rarely.
    """


class Redirected(AuthFailed):
    """The server answered a redirect (3xx), which is never followed.

    Following one would send the password (and the token in the query string)
    to wherever the server points. Handled like refused credentials: server
    work waits, no job's attempts count, until ``valt.url`` is corrected.
    """


class BodyTooLarge(ValtError):
    """The server refused a request body as too large (413)."""


class ChunkRefused(PermanentError):
    """The server refused a chunk with a 4xx other than 401/413 (see valt_rules)."""


class SourceChanged(IngestdError):
    """The source file changed (size, mtime or inode) while it was being uploaded."""


class FileRefused(SourceChanged):
    """The path no longer leads to the regular file that was judged, so it is not opened or
    not read: a symlink (with ``watch.follow_symlinks`` off), a FIFO, device, socket or
    folder, another file swapped in, or a folder that resolves outside the watch folder.

    A :class:`SourceChanged`: an upload in progress goes back to the settle checks.
    """


class ClaimEnded(IngestdError):
    """This daemon's claim on a job in a shared ledger is running out (it could not renew
    it): it stops sending the job before another daemon may take it. Not the job's fault."""


class SourceMissing(IngestdError):
    """The source file disappeared before its upload finished."""


class SourceUnreadable(IngestdError):
    """The source file, or a folder above it, cannot be looked at or opened now (permissions
    taken away, an I/O error): that file's trouble, tried again later like a failed request."""


class SidecarError(IngestdError):
    """A video's sidecar file cannot be used: unreadable, bad JSON/YAML, or wrong keys/types.

    ``file`` is the sidecar's file name, ``problem`` what is wrong with it.
    """

    def __init__(self, file: str, problem: str) -> None:
        self.file = file
        self.problem = problem
        super().__init__(f"sidecar {file}: {problem}")


class ShareNameError(IngestdError):
    """A ``share`` name cannot become an id: unknown on the server, or the account may not list.

    ``kind`` is ``users`` or ``groups``; ``forbidden`` tells the second case.
    """

    def __init__(self, kind: str, message: str, *, forbidden: bool = False) -> None:
        self.kind = kind
        self.forbidden = forbidden
        super().__init__(message)
