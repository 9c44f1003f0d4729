"""The one retry rule every provider follows: retry only what failed before any byte arrived.

A client's ``attempt`` maps its SDK's errors to ProviderError: PROVIDER_UNAVAILABLE for a
connection that failed before the server sent anything (safe to retry: no work was done),
PROVIDER_ERROR with ``partial_output_tokens`` for a stream that broke after output began
(never retried: it was charged and may have had effects), PROVIDER_ERROR/BAD_RESPONSE for an
answer. The whole attempt runs under the policy's timeout.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

from rolegate.errors import Code, ProviderError

T = TypeVar("T")


async def with_retries(
    attempt: Callable[[], Awaitable[T]], *, model: str, retries: int, timeout_s: float
) -> T:
    """Run ``attempt`` up to ``retries + 1`` times, each within ``timeout_s``."""
    for number in range(retries + 1):
        try:
            with anyio.fail_after(timeout_s):
                return await attempt()
        except TimeoutError:
            raise ProviderError(
                f"{model} did not finish within {timeout_s:g}s", code=Code.PROVIDER_TIMEOUT
            ) from None
        except ProviderError as exc:
            if exc.code != Code.PROVIDER_UNAVAILABLE or exc.answered or number == retries:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def answered_with_status(model: str, status: int, detail: object) -> ProviderError:
    """The server answered with an HTTP error: one mapping for every client.

    502/503/504 mean the server cannot serve now (PROVIDER_UNAVAILABLE, so a declared
    fallback applies); anything else is PROVIDER_ERROR. Either way the server answered,
    so the call is never retried. ``detail`` may be any JSON value (Ollama sends objects).
    """
    code = Code.PROVIDER_UNAVAILABLE if status in (502, 503, 504) else Code.PROVIDER_ERROR
    err = ProviderError(f"{model}: server answered HTTP {status}: {short(str(detail))}", code=code)
    err.answered = True
    return err


def stream_broke(
    model: str, chunks: int, output_tokens: int | None, exc: Exception
) -> ProviderError:
    """A stream that broke after output began: charged for what it produced, never retried."""
    err = ProviderError(
        f"{model}: the stream broke after {chunks} chunk(s): {short(str(exc))}",
        code=Code.PROVIDER_ERROR,
    )
    err.partial_output_tokens = output_tokens or chunks
    return err


def short(text: str, limit: int = 300) -> str:
    """``text`` cut to ``limit`` characters, for an error message."""
    return text if len(text) <= limit else text[:limit] + "..."
