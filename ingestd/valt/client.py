"""The Valt client: one aiohttp session, login and re-login, typed failures.

No URL, token or password ever leaves this module unredacted: every aiohttp
exception is turned into one of ours (:mod:`ingestd.valt.failures`: one line
naming the call, what is wrong and what to change), and raised ``from None``
so the original (whose text may hold the URL) is not chained into tracebacks.
The token travels only in the request this module makes. An answer's parsing
and the errors it maps to are in :mod:`ingestd.valt.wire`, a chunk's multipart
frame in :mod:`ingestd.valt.multipart`; what the server is *assumed* to do
lives in :mod:`ingestd.valt.rules`.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from ingestd.errors import (
    AuthFailed,
    ChunkRefused,
    PermanentError,
    Redirected,
    RetryableError,
    ServerUnreachable,
)
from ingestd.logs import get_logger, redact_url, register_secret
from ingestd.valt import rules as valt_rules
from ingestd.valt.failures import login_failure, timed_out, transport_failure
from ingestd.valt.multipart import PieceSource, frame_chunk
from ingestd.valt.outage import Outage, probe
from ingestd.valt.wire import (
    Answer,
    StallGuard,
    dig,
    guarded,
    parse_answer,
    raise_for,
    redirect_target,
)

log = get_logger("ingestd.valt.client")

MAX_ANSWER_BYTES = 1024 * 1024
LOGIN_RETRY_FIRST = 60.0
LOGIN_RETRY_MAX = 900.0


@dataclass(frozen=True, slots=True)
class CreatedRecord:
    record_id: str
    video_id: str


class ValtClient:
    """Talks to one Valt server on behalf of one account."""

    def __init__(
        self,
        *,
        base_url: str,
        username: str,
        password: str,
        timeout: float = 30.0,
        verify_tls: bool = True,
        ca_file: Path | None = None,
        on_contact: Callable[[bool], None] | None = None,
        outage_retry: tuple[float, float] | None = None,
    ) -> None:
        self.on_contact = on_contact or (lambda ok: None)
        self.base_url = base_url.rstrip("/") + valt_rules.API_PREFIX
        self._url_shown = redact_url(base_url.rstrip("/"))
        self.username = username
        self._password = password
        register_secret(password)
        self.timeout = timeout
        self._verify_tls = verify_tls
        self._ca_file = ca_file
        self._session: aiohttp.ClientSession | None = None
        self._token: str | None = None
        self._token_at = 0.0
        self._login_lock = asyncio.Lock()
        self._login_blocked_until = 0.0
        self._login_retry = LOGIN_RETRY_FIRST
        self.auth_failed = False
        # While the server redirects: one sentence naming valt.url and where it points.
        self.redirect: str | None = None
        self.last_contact_ok: bool | None = None
        self.logins = 0
        # Whether the server is down (outage.py): the daemon's probe pauses, first and cap;
        # None (one-shot commands) raises every failure as it is.
        self.outage = Outage(self._probe, retry=outage_retry)

    async def __aenter__(self) -> ValtClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _ssl(self) -> ssl.SSLContext | bool:
        if not self._verify_tls:
            return False
        if self._ca_file is not None:
            return ssl.create_default_context(cafile=str(self._ca_file))
        return True

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            timeout = aiohttp.ClientTimeout(
                total=None, connect=self.timeout, sock_connect=self.timeout, sock_read=self.timeout
            )
            connector = aiohttp.TCPConnector(ssl=self._ssl(), limit=0)
            self._session = aiohttp.ClientSession(
                timeout=timeout, connector=connector, raise_for_status=False
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- authentication -----------------------------------------------------

    def login_blocked_for(self) -> float:
        """Seconds until another login may be tried after refused credentials (0 = now)."""
        return max(0.0, self._login_blocked_until - time.monotonic())

    async def login(self) -> None:
        """Log in now (``ingestd check``), even if a token is held."""
        async with self._login_lock:
            await self._login_locked()

    def _blocked(self) -> AuthFailed | None:
        """The error for a call made while server work waits (refused login, redirect)."""
        wait = self.login_blocked_for()
        if wait <= 0:
            return None
        if self.redirect is not None:
            return Redirected(f"{self.redirect}; next attempt in {wait:.0f} s", reason="redirected")
        return AuthFailed(
            f"credentials refused by the server; next login attempt in {wait:.0f} s",
            status=401,
            reason="auth_failed",
        )

    def _block(self) -> float:
        """Make server work wait (growing pauses: accounts lock after a few failures)."""
        self._login_blocked_until = time.monotonic() + self._login_retry
        retry_in = self._login_retry
        self._login_retry = min(LOGIN_RETRY_MAX, self._login_retry * 2)
        return retry_in

    async def _login_locked(self) -> None:
        blocked = self._blocked()
        if blocked is not None:
            raise blocked
        answer = await self._exchange(
            "POST",
            "/login",
            "POST login",
            json_body={"username": self.username, "password": self._password},
        )
        if answer.status == 401:
            self.auth_failed = True
            retry_in = self._block()
            # The server's words are not logged: a login answer may quote the credentials.
            log.error("auth.failed", username=self.username, next_attempt_s=round(retry_in))
            raise AuthFailed(
                f"the server refused the credentials of user {self.username!r} "
                "(check valt.username and the password)",
                status=401,
                reason="auth_failed",
            )
        not_valt = login_failure(answer, "POST login", self._url_shown)
        if not_valt is not None:
            raise not_valt
        raise_for(answer, "POST login", quote=False)
        token = dig(answer.body, "data", "access_token")
        if not isinstance(token, str) or not token:
            raise PermanentError(
                "POST login: the answer holds no access token", reason="bad_answer"
            )
        register_secret(token, token=True)
        self._token, self._token_at = token, time.monotonic()
        self.auth_failed = False
        self._login_retry = LOGIN_RETRY_FIRST
        self.logins += 1
        log.info("auth.login", username=self.username)

    async def _current_token(self) -> str:
        async with self._login_lock:
            fresh = time.monotonic() - self._token_at < valt_rules.RELOGIN_INTERVAL
            if self._token is None or not fresh:
                await self._login_locked()
            assert self._token is not None
            return self._token

    def _drop_token(self, token: str) -> None:
        if self._token == token:
            self._token = None

    # --- transport ------------------------------------------------------------

    async def _call(self, method: str, path: str, what: str, **request: Any) -> Answer:
        """:meth:`_authed`, unless the server is down; a failure that may mean it is
        down is checked with a probe (outage.py), and becomes ServerUnreachable if so."""
        if self.outage.down and self._blocked() is None:
            raise self.outage.error(what)  # only the outage watch probes meanwhile
        try:
            answer = await self._authed(method, path, what, **request)
        except ServerUnreachable:
            raise
        except RetryableError as exc:
            await self.outage.suspect(exc)
            raise
        if valt_rules.means_server_down(answer.status, ""):
            try:
                raise_for(answer, what)
            except RetryableError as exc:
                await self.outage.suspect(exc)
        return answer

    async def _probe(self) -> bool:
        return await probe(self._exchange, self._token)

    async def _authed(
        self,
        method: str,
        path: str,
        what: str,
        *,
        json_body: object = None,
        pieces: PieceSource | None = None,
        headers: Mapping[str, str] | None = None,
        length: int | None = None,
    ) -> Answer:
        """An authenticated call; on a 401, log in once more and repeat it."""
        blocked = self._blocked()
        if blocked is not None:
            raise blocked  # a redirect: nothing goes to the server until the pause is over
        for attempt in (1, 2):
            token = await self._current_token()
            answer = await self._exchange(
                method,
                path,
                what,
                json_body=json_body,
                pieces=pieces,
                headers=headers,
                length=length,
                token=token,
            )
            if answer.status != 401:
                return answer
            self._drop_token(token)
            if attempt == 1:
                log.info("auth.expired", call=what)
        raise PermanentError(
            f"{what}: refused (401) even after a fresh login: the account may lack permission",
            status=401,
            reason="unauthorized",
        )

    async def _exchange(
        self,
        method: str,
        path: str,
        what: str,
        *,
        json_body: object = None,
        pieces: PieceSource | None = None,
        headers: Mapping[str, str] | None = None,
        length: int | None = None,
        token: str | None = None,
    ) -> Answer:
        """One HTTP request; every client-side failure becomes a RetryableError."""
        url = self.base_url + path
        params = {"access_token": token} if token else None
        guard = StallGuard(self.timeout)
        send_headers = dict(headers or {})
        data: Any = None
        if pieces is not None:
            data = guarded(pieces(), guard)
            send_headers["Content-Length"] = str(length)
        try:
            async with asyncio.timeout(None) as timeout:
                guard.start(timeout)
                if pieces is None:
                    guard.body_done()
                async with self._get_session().request(
                    method,
                    url,
                    params=params,
                    json=json_body,
                    data=data,
                    headers=send_headers,
                    # A redirect would re-send the password, or the token, wherever it points.
                    allow_redirects=False,
                ) as response:
                    guard.body_done()
                    raw = await response.content.read(MAX_ANSWER_BYTES)
                    answer = parse_answer(response.status, raw, response.headers.get("Date"))
                    location = response.headers.get("Location")
        except TimeoutError:
            self._contact(False)
            raise timed_out(what, self.timeout) from None
        except aiohttp.ClientError as exc:
            self._contact(False)
            raise transport_failure(exc, what) from None
        finally:
            guard.body_done()
        self._contact(answer.status < 500)
        if 300 <= answer.status < 400:
            self._redirected(what, answer.status, url, location)
        self.redirect = None
        return answer

    def _redirected(self, what: str, status: int, url: str, location: str | None) -> None:
        """A 3xx: not followed; server work waits as after a refused login."""
        target = redirect_target(url, location)
        self.redirect = (
            f"valt.url {self._url_shown} redirects to {target} ({status} on {what}); "
            "redirects are not followed: set valt.url to the address the server answers on"
        )
        retry_in = self._block()
        log.error(
            "valt.redirected", status=status, call=what, target=target, next_attempt_s=retry_in
        )
        raise Redirected(self.redirect, status=status, reason="redirected")

    def _contact(self, ok: bool) -> None:
        self.last_contact_ok = ok
        self.on_contact(ok)

    # --- calls --------------------------------------------------------------

    async def server_version(self) -> tuple[str, str | None]:
        """The server's version and its ``Date`` header (for the clock check)."""
        answer = await self._call("GET", "/admin/general", "GET admin/general")
        raise_for(answer, "GET admin/general")
        version = dig(answer.body, "data", "version")
        return (str(version) if version is not None else "unknown"), answer.date

    async def create_upload(
        self, name: str, template: Mapping[str, str], share: Mapping[str, list[int]]
    ) -> CreatedRecord:
        """``POST records/create-upload``: a new record and the id of its empty video."""
        what = "POST records/create-upload"
        body: dict[str, object] = {"name": name}
        if template:
            body["template"] = dict(template)
        if any(share.values()):
            body["share"] = {key: list(value) for key, value in share.items()}
        answer = await self._call("POST", "/records/create-upload", what, json_body=body)
        raise_for(answer, what)
        record_id = dig(answer.body, "id")
        videos = dig(answer.body, "videos")
        if record_id is None and isinstance(dig(answer.body, "data"), Mapping):
            record_id, videos = dig(answer.body, "data", "id"), dig(answer.body, "data", "videos")
        video_ids = valt_rules.parse_video_ids(videos)
        if record_id is None or not video_ids:
            # The record may exist: the caller reconciles by search before creating again.
            raise RetryableError(
                f"{what}: the answer holds no record and video id", reason="bad_answer"
            )
        return CreatedRecord(str(record_id), video_ids[0])

    async def upload_chunk(
        self,
        record_id: str,
        video_id: str,
        *,
        filename: str,
        content_range: str,
        length: int,
        pieces: PieceSource,
    ) -> None:
        """Send one chunk (``length`` bytes from ``pieces``) as multipart ``file``."""
        what = "POST records/{id}/videos/{id}"
        chunk = frame_chunk(filename, pieces, length)
        answer = await self._call(
            "POST",
            f"/records/{record_id}/videos/{video_id}",
            what,
            pieces=chunk.pieces,
            length=chunk.length,
            headers={"Content-Type": chunk.content_type, "Content-Range": content_range},
        )
        if 400 <= answer.status < 500 and answer.status not in (401, 413, 408, 425, 429):
            message = valt_rules.status_message(answer.status, answer.body, answer.text)
            raise ChunkRefused(f"{what}: {message}", status=answer.status, reason="refused")
        raise_for(answer, what)

    async def get_record(self, record_id: str) -> Mapping[str, Any] | None:
        """``GET records/{id}``'s ``data``, or None when the record does not exist."""
        what = "GET records/{id}"
        answer = await self._call("GET", f"/records/{record_id}", what)
        if answer.status == 404:
            return None
        raise_for(answer, what)
        data = dig(answer.body, "data")
        if not isinstance(data, Mapping):
            raise RetryableError(f"{what}: the answer holds no record", reason="bad_answer")
        return data

    async def search_records(self, text: str, since: float) -> list[valt_rules.FoundRecord]:
        """Records whose name contains ``text`` (a substring search), created since ``since``."""
        what = "POST records (search)"
        start_date, end_date = valt_rules.search_dates(since)
        found: list[valt_rules.FoundRecord] = []
        for page in range(valt_rules.SEARCH_MAX_PAGES):
            body = {
                "search": text,
                "start_date": start_date,
                "end_date": end_date,
                "offset": page * valt_rules.SEARCH_PAGE,
                "limit": valt_rules.SEARCH_PAGE,
            }
            answer = await self._call("POST", "/records", what, json_body=body)
            raise_for(answer, what)
            records = dig(answer.body, "data", "records")
            if not isinstance(records, list):
                raise RetryableError(
                    f"{what}: the answer holds no record list", reason="bad_answer"
                )
            found.extend(r for r in map(_found, records) if r is not None)
            if len(records) < valt_rules.SEARCH_PAGE:
                break
        return found

    async def delete_record(self, record_id: str) -> bool:
        """Delete a record; False when it was already gone."""
        what = "POST records/{id}/delete"
        answer = await self._call("POST", f"/records/{record_id}/delete", what, json_body={})
        if answer.status == 404:
            return False
        raise_for(answer, what)
        return True

    async def _admin_get(self, path: str, what: str) -> Answer | None:
        """An ``admin/*`` GET; None when the account may not make it (403, or 401 even
        after a fresh login): valt-api.md, ordinary accounts may be refused there."""
        try:
            answer = await self._call("GET", path, what)
        except PermanentError as exc:
            if exc.status == 401:
                return None
            raise
        if answer.status in (401, 403):
            return None
        return answer

    async def admin_list(self, kind: str) -> list[Mapping[str, Any]] | None:
        """``admin/users`` or ``admin/user_groups``; None when the account may not list them."""
        what = f"GET admin/{kind}"
        answer = await self._admin_get(f"/admin/{kind}", what)
        if answer is None:
            return None
        raise_for(answer, what)
        key = "users" if kind == "users" else "userGroups"
        items = dig(answer.body, "data", key)
        return [i for i in items if isinstance(i, Mapping)] if isinstance(items, list) else []

    async def get_template(self, template_id: int) -> Mapping[str, Any] | None:
        """``admin/templates/{id}``'s ``data`` (its ``fields``); None when the account may
        not read it. A template that does not exist is a PermanentError with status 404."""
        what = "GET admin/templates/{id}"
        answer = await self._admin_get(f"/admin/templates/{template_id}", what)
        if answer is None:
            return None
        raise_for(answer, what)
        data = dig(answer.body, "data")
        if not isinstance(data, Mapping):
            raise PermanentError(f"{what}: the answer holds no template", reason="bad_answer")
        return data


def _found(raw: object) -> valt_rules.FoundRecord | None:
    return valt_rules.parse_found_record(raw) if isinstance(raw, Mapping) else None


__all__ = ["CreatedRecord", "ValtClient"]
