"""What a failed exchange with the server means, in one line a person can act on.

The one place where aiohttp's and ssl's exceptions become ours. A message names
the call (``POST login``), what went wrong and what to change; it carries the
host and port of ``valt.url`` at most, never a path, a query string, a token or
a password (the exception's own text, which may quote the URL, is not used
where a plainer sentence exists, and is scrubbed where it is the last resort).
"""

from __future__ import annotations

import errno
import ssl

import aiohttp

from ingestd.errors import PermanentError, RetryableError, ValtError
from ingestd.logs import redact_text
from ingestd.valt import rules as valt_rules
from ingestd.valt.wire import Answer, phrase

__all__ = ["login_failure", "timed_out", "transport_failure"]

# OpenSSL's verify codes (X509_V_ERR_*) that tell one certificate problem from another.
_EXPIRED = 10
_NOT_YET_VALID = 9
_NAME_MISMATCH = frozenset({62, 64})  # hostname, IP address
_SELF_SIGNED = 18
_UNKNOWN_ISSUER = frozenset({2, 19, 20, 21})

# What OpenSSL says when the far end of an https:// URL speaks plain http.
_PLAIN_HTTP_REASONS = frozenset(
    {"WRONG_VERSION_NUMBER", "HTTP_REQUEST", "PACKET_LENGTH_TOO_LONG", "RECORD_LAYER_FAILURE"}
)


def timed_out(what: str, timeout: float) -> RetryableError:
    """No progress (no answer, or our body not read) for ``valt.timeout`` seconds."""
    return RetryableError(
        f"{what}: the server did not answer within {timeout:.0f} s (valt.timeout): it may be "
        "overloaded or a firewall may drop the traffic; raise valt.timeout for a slow link",
        reason="timeout",
    )


def transport_failure(exc: aiohttp.ClientError, what: str) -> RetryableError:
    """A request that got no HTTP answer: refused, unresolvable, TLS, a broken connection."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return RetryableError(f"{what}: {_certificate(exc)}", reason="tls")
    if isinstance(exc, aiohttp.ClientConnectorSSLError):
        return RetryableError(f"{what}: {_handshake(exc)}", reason="tls")
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return RetryableError(
            f"{what}: the host name {exc.host} in valt.url cannot be resolved: "
            "check its spelling and this machine's DNS",
            reason="connection",
        )
    if isinstance(exc, aiohttp.ClientConnectorError):
        return RetryableError(f"{what}: {_connect(exc)}", reason="connection")
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return RetryableError(
            f"{what}: the server closed the connection without answering "
            "(restarting, or a proxy cut the request); tried again later",
            reason="connection",
        )
    if isinstance(exc, aiohttp.ClientOSError) and exc.strerror:
        return RetryableError(
            f"{what}: the connection to the server broke ({exc.strerror}); tried again later",
            reason="connection",
        )
    # The last resort: aiohttp's own words, scrubbed of the URL's query string and secrets.
    text = redact_text(" ".join(str(exc).split()))[:200]
    return RetryableError(f"{what}: {type(exc).__name__}: {text}", reason="connection")


def login_failure(answer: Answer, what: str, url_shown: str) -> ValtError | None:
    """A login answered with a status that says this is not Valt's login at all."""
    if answer.status not in valt_rules.NOT_VALT_LOGIN_STATUSES:
        return None
    message = (
        f"{what}: {url_shown} answered {answer.status} {phrase(answer.status)}: the server "
        "was reached, but it is probably not Valt, or valt.url is not its base address "
        f"(the address of its web page, without {valt_rules.API_PREFIX})"
    )
    if valt_rules.is_retryable_status(answer.status):
        return RetryableError(message, status=answer.status, reason="not_valt")
    return PermanentError(message, status=answer.status, reason="not_valt")


def _where(exc: aiohttp.ClientConnectorError) -> str:
    host = f"[{exc.host}]" if ":" in exc.host else exc.host
    return f"{host}:{exc.port}"


def _connect(exc: aiohttp.ClientConnectorError) -> str:
    where = _where(exc)
    error = exc.os_error
    if isinstance(error, ConnectionRefusedError) or error.errno == errno.ECONNREFUSED:
        return (
            f"nothing answers at {where} (connection refused): is the Valt server running, "
            "and are the host and port in valt.url right?"
        )
    if error.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return f"{where} cannot be reached ({error.strerror}): check the network and valt.url"
    reason = error.strerror or type(error).__name__
    return f"cannot connect to {where} ({reason}): check that the server is up and valt.url"


def _certificate(exc: aiohttp.ClientConnectorCertificateError) -> str:
    error = exc.certificate_error
    code = error.verify_code if isinstance(error, ssl.SSLCertVerificationError) else None
    if code == _EXPIRED:
        return (
            "the server's TLS certificate has expired: renew it on the server "
            "(or correct this machine's clock if it is wrong)"
        )
    if code == _NOT_YET_VALID:
        return (
            "the server's TLS certificate is not valid yet: check this machine's clock "
            "and the server's"
        )
    if code in _NAME_MISMATCH:
        return (
            f"the server's TLS certificate is not made out to {exc.host} (hostname mismatch): "
            "set valt.url to a name the certificate holds, or have it reissued for this name"
        )
    if code == _SELF_SIGNED:
        return (
            "the server's TLS certificate is not trusted: it is self-signed "
            "(set valt.ca_file to that certificate, or to the CA that should sign it)"
        )
    if code in _UNKNOWN_ISSUER:
        return (
            "the server's TLS certificate is not trusted: a CA this machine does not know "
            "signed it (set valt.ca_file to that CA's certificate, PEM)"
        )
    detail = error.verify_message if isinstance(error, ssl.SSLCertVerificationError) else ""
    return (
        f"the server's TLS certificate is refused ({detail or 'verification failed'}): "
        "fix the certificate, or set valt.ca_file to the CA that signed it"
    )


def _handshake(exc: aiohttp.ClientConnectorSSLError) -> str:
    where = _where(exc)
    reason = getattr(exc.os_error, "reason", None)
    if reason in _PLAIN_HTTP_REASONS:
        return (
            f"valt.url says https://, but {where} answers plain http: write http:// "
            "in valt.url, or the port of the server's https"
        )
    return (
        f"the TLS handshake with {where} failed ({reason or 'no reason given'}): "
        "check the scheme and port of valt.url"
    )
