"""map_exception: the one place foreign errors become error kinds."""

from __future__ import annotations

import ssl

import pytest
from aiohttp import client_exceptions, http_exceptions
from aiohttp.client_reqrep import ConnectionKey

from crawler import errors
from crawler.errormap import map_exception

KEY = ConnectionKey("h", 80, False, True, None, None, None)
DNS = client_exceptions.ClientConnectorDNSError(KEY, OSError(-2, "Name or service not known"))
REFUSED = client_exceptions.ClientConnectorError(KEY, ConnectionRefusedError(111, "refused"))


def response_error_caused_by(cause: BaseException) -> client_exceptions.ClientResponseError:
    err = client_exceptions.ClientResponseError(None, (), status=400, message="bad")  # type: ignore[arg-type]
    err.__cause__ = cause
    return err


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (DNS, "dns"),
        (REFUSED, "connect"),
        (client_exceptions.ServerDisconnectedError(), "connect"),
        (ConnectionResetError(104, "reset"), "connect"),
        (ssl.SSLError("handshake"), "tls"),
        (client_exceptions.ClientPayloadError("short"), "protocol"),
        (response_error_caused_by(http_exceptions.BadStatusLine("garbage")), "protocol"),
        (http_exceptions.LineTooLong("header", "8190"), "protocol"),
        (RuntimeError("surprise"), "internal"),  # a bug of ours, not the server's
    ],
)  # fmt: skip
def test_kinds(exc: BaseException, kind: str) -> None:
    assert map_exception(exc, deadline_left=5).kind == kind


def test_malformed_response_is_never_http() -> None:
    mapped = map_exception(
        response_error_caused_by(http_exceptions.BadHttpMessage("x")), deadline_left=5
    )
    assert isinstance(mapped, errors.ProtocolError)


def test_timeouts_depend_on_the_deadline() -> None:
    assert type(map_exception(TimeoutError(), deadline_left=0)) is errors.Timeout
    attempt = map_exception(client_exceptions.ConnectionTimeoutError(), deadline_left=3)
    assert isinstance(attempt, errors.AttemptTimeout) and attempt.retryable
    assert attempt.kind == "timeout"


def test_fetch_errors_pass_through() -> None:
    original = errors.TooLarge("big")
    assert map_exception(original, deadline_left=1) is original
