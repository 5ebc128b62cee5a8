"""Connection to a Label Studio server: settings from the environment, retries, clear failures."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import httpx
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError

T = TypeVar("T")

URL_ENV, TOKEN_ENV, WAIT_ENV = "LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "LABEL_STUDIO_WAIT_S"
DEFAULT_WAIT_S = 60.0


class LabelStudioError(RuntimeError):
    """Label Studio is unreachable or refused us; the message says what to check."""


@dataclass(frozen=True)
class Connection:
    url: str
    token: str
    attempts: int = 4
    backoff_s: float = 1.0
    wait_s: float = DEFAULT_WAIT_S  # the most one call waits in all, retries included (LABEL_STUDIO_WAIT_S)

    @property
    def timeout_s(self) -> float:
        """One request's limit: a third of the wait, so that a timed-out request leaves room for another try."""
        return self.wait_s / 3

    @classmethod
    def from_env(cls, url: str | None = None) -> Connection:
        url = url or os.environ.get(URL_ENV)
        token = os.environ.get(TOKEN_ENV)
        if not url or not token:
            raise LabelStudioError(
                f"no Label Studio configured: set {URL_ENV} (e.g. http://127.0.0.1:8080) and {TOKEN_ENV} "
                "(your account's legacy API token), or start one with `python -m annotation serve`"
            )
        wait = os.environ.get(WAIT_ENV, str(DEFAULT_WAIT_S))
        try:
            wait_s = float(wait)
        except ValueError:
            wait_s = -1.0
        if not wait_s > 0:
            raise LabelStudioError(
                f"{WAIT_ENV}={wait!r}: set it to the seconds one Label Studio call may wait in all (default "
                f"{DEFAULT_WAIT_S:g})"
            )
        return cls(url=url.rstrip("/"), token=token, wait_s=wait_s)

    def client(self) -> LabelStudio:
        return LabelStudio(base_url=self.url, api_key=self.token, timeout=self.timeout_s)

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one API call; retry network failures and 5xx with exponential backoff, within `wait_s` in all."""
        deadline = time.monotonic() + self.wait_s
        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except ApiError as exc:
                if exc.status_code in (401, 403):
                    raise LabelStudioError(
                        f"{what}: Label Studio at {self.url} refused the token (HTTP {exc.status_code}); check "
                        f"{TOKEN_ENV}: it must be the account's legacy API token, which a server keeps from its FIRST "
                        "start (for `python -m annotation serve`: the key it was first started with); a server first "
                        "started without LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true rejects legacy tokens"
                    ) from None
                if exc.status_code is not None and exc.status_code < 500:
                    raise LabelStudioError(
                        f"{what}: Label Studio answered HTTP {exc.status_code}: {str(exc.body)[:300]}"
                    ) from None
                error: Exception = exc
            except (httpx.TransportError, httpx.TimeoutException) as exc:
                error = exc
            pause = self.backoff_s * 2 ** (attempt - 1)
            if attempt == self.attempts or time.monotonic() + pause + self.timeout_s > deadline:
                break
            time.sleep(pause)
        raise self.gave_up(what, error, attempt)

    def gave_up(self, what: str, error: Exception, attempts: int) -> LabelStudioError:
        """The error after the last attempt: a server too slow to answer is not a server that is down."""
        if isinstance(error, httpx.TimeoutException) and not isinstance(error, httpx.ConnectTimeout):
            return LabelStudioError(
                f"{what}: Label Studio at {self.url} took the request but did not answer within {self.timeout_s:g} s "
                f"({attempts} attempts in {self.wait_s:g} s): it runs but is busy or the request is large (e.g. a big "
                "project's export); look at the server's log and retry when it is idle, or allow a longer wait with "
                f"{WAIT_ENV} (seconds)"
            )
        return LabelStudioError(
            f"{what}: cannot reach Label Studio at {self.url} after {attempts} attempts ({type(error).__name__}: "
            f"{error}); check that the server runs (`python -m annotation serve`) and that {URL_ENV} points at it"
        )
