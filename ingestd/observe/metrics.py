"""Prometheus metrics of one daemon, on a registry of its own (never the global one).

Counters move in the engine's telemetry hooks (:class:`MetricsTelemetry`),
which only add numbers: no I/O happens on the upload path. Gauges that
describe the ledger (jobs per state, queue depth, the oldest waiting file)
are refreshed when ``/metrics`` is scraped; free space comes from the health
monitor's last probe.

No label ever holds a file path (design.md, "Logs"): labels are job states,
short reason codes, and the *index* of a folder in ``watch.paths`` ("0", "1"...)
or its configured name, because a mount point can carry a person's or a room's name
as well as a file can.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from ingestd import __version__
from ingestd.disk.folders import FolderState
from ingestd.telemetry import Telemetry

# What generate_latest() writes, and what prometheus_client itself serves it as.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# 1 MB over a fast LAN takes well under a second; 10 GB over a slow WAN link, hours.
DURATION_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)
# From a congested 1 Mbit/s uplink (125 kB/s) to 10 Gbit/s (1.25 GB/s).
RATE_BUCKETS = (1.25e5, 2.5e5, 5e5, 1e6, 2.5e6, 5e6, 1e7, 2.5e7, 5e7, 1e8, 2.5e8, 5e8, 1.25e9)
_LABEL_MAX = 40
_NOT_A_CODE = re.compile(r"[^a-z0-9_]+")

JobFailedHook = Callable[[int, str, str, str], None]

# Label values made at 0 at start-up, so a counter's first increase is seen by increase()
# and rate() (a series that appears at 1 looks like no change). Other codes still count.
FAILURE_REASONS = (
    "upload_refused",
    "too_large",
    "ambiguous_record",
    "source_missing",
    "not_ready",
    "bad_sidecar",
    "unauthorized",
    "connection",
    "timeout",
    "tls",
    "bad_answer",
    "source_unreadable",
    "internal_error",
)
RETRY_CAUSES = (
    "connection",
    "timeout",
    "tls",
    "bad_answer",
    "source_unreadable",
    "internal_error",
    "http_500",
    "http_502",
    "http_503",
    "http_504",
)


def label_code(text: str) -> str:
    """A reason or cause code fit for a label: short, ``[a-z0-9_]``, bounded in number."""
    code = _NOT_A_CODE.sub("_", text.lower()).strip("_")[:_LABEL_MAX]
    return code or "other"


class Metrics:
    """Every metric ingestd exports, registered on :attr:`registry`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.up = Gauge("ingestd_up", "1 while the daemon runs", registry=reg)
        self.up.set(1)
        self.build_info = Gauge(
            "ingestd_build_info", "Always 1; ingestd's version", ["version"], registry=reg
        )
        self.build_info.labels(version=__version__).set(1)
        self.heartbeat = Gauge(
            "ingestd_heartbeat_timestamp_seconds",
            "Unix time the dispatch loop last went round (every second while it is alive)",
            registry=reg,
        )
        self.paused = Gauge("ingestd_paused", "1 while paused (ingestd pause)", registry=reg)
        self.login_ok = Gauge(
            "ingestd_login_ok",
            "0 while the server refuses the credentials or redirects the login, else 1",
            registry=reg,
        )
        self.login_ok.set(1)
        self.ledger_writable = Gauge(
            "ingestd_ledger_writable",
            "1 while the ledger takes writes, 0 while it does not (full disk, read-only)",
            registry=reg,
        )
        self.ledger_writable.set(1)
        self.healthy = Gauge("ingestd_healthy", "1 when /healthz answers 200, else 0", registry=reg)
        self.jobs = Gauge("ingestd_jobs", "Jobs in the ledger by state", ["state"], registry=reg)
        self.bytes_uploaded = Counter(
            "ingestd_bytes_uploaded", "Bytes acknowledged by the server", registry=reg
        )
        self.uploads_completed = Counter(
            "ingestd_uploads_completed", "Files whose every byte reached the server", registry=reg
        )
        self.uploads_failed = Counter(
            "ingestd_uploads_failed",
            "Jobs that failed permanently, by reason",
            ["reason"],
            registry=reg,
        )
        self.retries = Counter(
            "ingestd_retries",
            "Upload attempts that will be tried again, by cause",
            ["cause"],
            registry=reg,
        )
        self.upload_duration = Histogram(
            "ingestd_upload_duration_seconds",
            "From the first attempt to the last byte sent, per file",
            buckets=DURATION_BUCKETS,
            registry=reg,
        )
        self.upload_rate = Histogram(
            "ingestd_upload_rate_bytes_per_second",
            "File size divided by its upload duration",
            buckets=RATE_BUCKETS,
            registry=reg,
        )
        self.queue_depth = Gauge(
            "ingestd_queue_depth",
            "Finished files waiting for an upload worker (including those backing off)",
            registry=reg,
        )
        self.oldest_waiting_age = Gauge(
            "ingestd_oldest_waiting_age_seconds",
            "Age of the oldest file not yet fully sent, since it was discovered (0: none)",
            registry=reg,
        )
        self.last_upload = Gauge(
            "ingestd_last_upload_timestamp_seconds",
            "Unix time the last upload completed, as the ledger remembers it (0: none yet)",
            registry=reg,
        )
        self.contact_failures = Counter(
            "ingestd_server_contact_failures",
            "Requests that did not reach the Valt server (connection, timeout, 5xx)",
            registry=reg,
        )
        self.server_up = Gauge(
            "ingestd_server_up",
            "0 while the Valt server is unreachable (requests and a probe fail), else 1",
            registry=reg,
        )
        self.server_up.set(1)
        self.server_down_since = Gauge(
            "ingestd_server_unreachable_since_timestamp_seconds",
            "Unix time the Valt server became unreachable (0: it answers)",
            registry=reg,
        )
        self.auth_failed = Gauge(
            "ingestd_auth_failed", "1 while the server refuses the credentials", registry=reg
        )
        self.watch_free = Gauge(
            "ingestd_watch_free_bytes",
            'Free bytes on the volume of each watch folder; volume="N" is its index in watch.paths',
            ["volume"],
            registry=reg,
        )
        self.watch_folder_state = Gauge(
            "ingestd_watch_folder_state",
            "1 for each watch folder's present state (present, missing, unreadable, unmounted),"
            ' 0 for the others; folder="NAME" or "watch.paths[N]", never the path',
            ["folder", "state"],
            registry=reg,
        )
        self.alerts_sent = Counter(
            "ingestd_alerts_sent", "Webhook alerts delivered, by event", ["event"], registry=reg
        )
        self.alerts_failed = Counter(
            "ingestd_alerts_failed",
            "Webhook alerts given up after retries, by event",
            ["event"],
            registry=reg,
        )
        for reason in FAILURE_REASONS:
            self.uploads_failed.labels(reason=reason)
        for cause in RETRY_CAUSES:
            self.retries.labels(cause=cause)

    def count_alerts(self, events: Iterable[str]) -> None:
        """Make the alert counters of ``events`` exist at 0."""
        for event in events:
            self.alerts_sent.labels(event=event)
            self.alerts_failed.labels(event=event)

    def set_jobs(self, counts: Mapping[str, int]) -> None:
        for state, count in counts.items():
            self.jobs.labels(state=state).set(count)

    def set_server(self, unreachable_since: float | None) -> None:
        self.server_up.set(0 if unreachable_since is not None else 1)
        self.server_down_since.set(unreachable_since or 0)

    def set_free_space(self, free: Mapping[int, int]) -> None:
        for index, free_bytes in free.items():
            self.watch_free.labels(volume=str(index)).set(free_bytes)

    def set_folder_state(self, folder: str, state: FolderState) -> None:
        for each in FolderState:
            self.watch_folder_state.labels(folder=folder, state=each.value).set(
                1 if each == state else 0
            )

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


class MetricsTelemetry(Telemetry):
    """The engine's telemetry hooks, also feeding :class:`Metrics` (and one alert hook).

    Hooks stay cheap and synchronous: counters only, plus ``on_job_failed``,
    which must only queue (see ``alerts.Alerter.job_failed``).
    """

    def __init__(self, metrics: Metrics, on_job_failed: JobFailedHook | None = None) -> None:
        super().__init__()
        self.metrics = metrics
        self.on_job_failed = on_job_failed

    def chunk_sent(self, nbytes: int) -> None:
        super().chunk_sent(nbytes)
        self.metrics.bytes_uploaded.inc(nbytes)

    def upload_completed(self, size: int, seconds: float) -> None:
        super().upload_completed(size, seconds)
        self.metrics.uploads_completed.inc()
        self.metrics.upload_duration.observe(seconds)
        if seconds > 0:
            self.metrics.upload_rate.observe(size / seconds)
        if self.last_upload_at is not None:
            self.metrics.last_upload.set(self.last_upload_at)

    def job_failed(self, job_id: int, path: str, reason: str, detail: str) -> None:
        super().job_failed(job_id, path, reason, detail)
        self.metrics.uploads_failed.labels(reason=label_code(reason)).inc()
        if self.on_job_failed is not None:
            self.on_job_failed(job_id, path, reason, detail)

    def retry(self, cause: str) -> None:
        super().retry(cause)
        self.metrics.retries.labels(cause=label_code(cause)).inc()

    def last_upload_known(self, at: float) -> None:
        """The ledger's last upload, read at start-up: the gauge survives a restart."""
        if self.last_upload_at is None or at > self.last_upload_at:
            self.last_upload_at = at
            self.metrics.last_upload.set(at)

    def server_contact(self, ok: bool) -> None:
        super().server_contact(ok)
        if not ok:
            self.metrics.contact_failures.inc()
