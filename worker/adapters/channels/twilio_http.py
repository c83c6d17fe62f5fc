"""What Twilio's channels share: the SDK's HTTP client pointed at a base URL, and Twilio's errors
sorted into the kinds of :mod:`worker.adapters.channels.base`, each channel naming its own codes."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter
from twilio.base.exceptions import TwilioException, TwilioRestException, TwilioServiceException
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response
from urllib3.exceptions import NewConnectionError

from worker.adapters.channels.base import ErrorKind, TransportError, exception_chain, parse_retry_after

KEEP_ALIVE_CONNECTIONS = 32   # at least as many as the threads that send alerts in one process

FIND_LIMIT = 50   # a rep's newest messages (or calls), searched for one whose answer was lost


@dataclass(frozen=True)
class ErrorCodes:
    """A channel's Twilio error codes: those that condemn the recipient's number (the channel is switched
    off for that rep) and those that say our side is wrong (every rep would fail alike: alert operators)."""

    recipient: frozenset[int]
    account: frozenset[int]


class RoutedHttpClient(TwilioHttpClient):
    """The SDK's HTTP client, pointed at ``base_url`` and keeping response headers.

    The SDK has no base-URL setting, so each request URL's scheme and host are
    swapped for ``base_url``'s (its path, if any, becomes a prefix). And its
    exceptions drop the response headers, so the headers of the last response
    on *this thread* are kept for reading ``Retry-After`` after a 429.
    """

    def __init__(self, base_url: str | None, timeout: float) -> None:
        super().__init__(timeout=timeout)
        self._base = urlsplit(base_url.rstrip("/")) if base_url else None
        self._local = threading.local()
        # Alerts go out from several threads at once. The SDK keeps cpu_count + 4
        # connections alive and drops (with a warning) each one beyond that, so a
        # burst would pay a new TLS handshake per message.
        if self.session is not None:
            for scheme in ("https://", "http://"):
                self.session.mount(scheme, HTTPAdapter(pool_maxsize=KEEP_ALIVE_CONNECTIONS))

    def request(
        self,
        method: str,
        url: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,
        allow_redirects: bool = False,
    ) -> Response:
        self._local.headers = None
        if self._base is not None:
            parts = urlsplit(url)
            url = urlunsplit((self._base.scheme, self._base.netloc, self._base.path + parts.path, parts.query, ""))
        response = super().request(method, url, params, data, headers, auth, timeout, allow_redirects)
        self._local.headers = response.headers
        return response

    def last_response_headers(self) -> Mapping[str, str] | None:
        headers: Mapping[str, str] | None = getattr(self._local, "headers", None)
        return headers


def classify(exc: TwilioException | requests.RequestException, http: RoutedHttpClient, codes: ErrorCodes
             ) -> TransportError:
    """A failed request to Twilio as a :class:`TransportError` of the kind that says what to do next."""
    if isinstance(exc, (TwilioRestException, TwilioServiceException)):
        status = int(exc.status)
        code = int(exc.code) if exc.code is not None else None
        text = exc.msg if isinstance(exc, TwilioRestException) else (exc.detail or exc.title)
        retry_after = parse_retry_after(http.last_response_headers()) if status == 429 else None
        return TransportError(kind_for(status, code, codes), f"Twilio {status}: {text}",
                              code=str(code) if code is not None else None, status=status, retry_after=retry_after)
    if isinstance(exc, requests.RequestException):
        # ConnectTimeout and a failed connect (refused, unreachable, DNS) happen before a byte of the
        # request leaves: safe to retry. Every other failure, including a connection dropped after
        # sending, may have reached Twilio.
        if isinstance(exc, requests.ConnectTimeout) or any(
                isinstance(e, NewConnectionError) for e in exception_chain(exc)):
            return TransportError("transient", f"Twilio unreachable: {type(exc).__name__}")
        return TransportError("maybe_sent", f"Twilio request failed: {type(exc).__name__}: {exc}")
    # Any other TwilioException, e.g. an unreadable body on a 2xx: Twilio answered, so it may well be out.
    return TransportError("maybe_sent", f"Twilio answer not understood: {exc}")


def kind_for(status: int, code: int | None, codes: ErrorCodes) -> ErrorKind:
    if code in codes.recipient:
        return "recipient"
    if status in (401, 403) or code in codes.account:
        return "account"
    if status in (429, 503):
        return "transient"
    if status >= 500:
        return "maybe_sent"
    return "invalid"
