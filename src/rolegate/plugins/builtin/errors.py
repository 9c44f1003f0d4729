"""The one table from the built-in clients' SDK exceptions to rolegate codes.

    failure      openai SDK                    ollama SDK              code
    -----------  ----------------------------  ----------------------  --------------------
    unreachable  APIConnectionError (also      ConnectionError,        PROVIDER_UNAVAILABLE
                 its timeouts)                 httpx.TransportError    (retried)
      after a    the same                      the same                PROVIDER_ERROR
      chunk came                                                       (charged, no retry)
    answered     APIStatusError                ResponseError           by HTTP status
    malformed    APIResponseValidationError,   ValueError, KeyError    BAD_RESPONSE
                 ValueError

An answered HTTP error is PROVIDER_UNAVAILABLE for 502/503/504, else PROVIDER_ERROR, and is
never retried (``retry.answered_with_status``); a broken stream is charged for what it
produced and never retried (``retry.stream_broke``). The rows are tried in the order above:
the first that matches decides. Anything else is not a provider failure and propagates.

Each SDK's row is built on first use, so a server that uses one SDK never imports the other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from functools import cache

from rolegate.errors import Code, ProviderError
from rolegate.plugins.retry import answered_with_status, short, stream_broke


class Failure(StrEnum):
    UNREACHABLE = "unreachable"  # no answer: the connection failed or broke
    ANSWERED = "answered"  # the server answered with an HTTP error
    MALFORMED = "malformed"  # the server answered something the SDK cannot read


@dataclass(frozen=True, slots=True)
class SdkErrors:
    """One SDK's row of the table: which of its exceptions mean which failure."""

    sdk: str
    unreachable: tuple[type[Exception], ...]
    answered: tuple[type[Exception], ...]
    malformed: tuple[type[Exception], ...]
    status: Callable[[Exception], tuple[int, object]]  # an answered error's status and detail

    @property
    def handled(self) -> tuple[type[Exception], ...]:
        """Every exception type the table maps; ``except errors.handled`` catches them."""
        return self.unreachable + self.answered + self.malformed

    def classify(self, exc: Exception) -> Failure | None:
        if isinstance(exc, self.unreachable):
            return Failure.UNREACHABLE
        if isinstance(exc, self.answered):
            return Failure.ANSWERED
        if isinstance(exc, self.malformed):
            return Failure.MALFORMED
        return None


def to_provider_error(
    errors: SdkErrors,
    exc: Exception,
    *,
    model: str | None,
    base_url: str,
    received: bool = False,
    chunks: int = 0,
    output_tokens: int | None = None,
) -> ProviderError:
    """The ProviderError for ``exc``, raised by a call to ``model`` (None: a model listing)
    on ``base_url``.

    ``received``: a stream chunk had arrived when ``exc`` was raised (``chunks`` deltas,
    ``output_tokens`` reported so far), so a lost connection is a broken, charged stream.
    """
    failure = errors.classify(exc)
    prefix = f"{model}: " if model is not None else ""
    if failure is Failure.UNREACHABLE:
        if received and model is not None:
            return stream_broke(model, chunks, output_tokens, exc)
        return ProviderError(
            f"{prefix}cannot reach {base_url}: {short(str(exc))}",
            code=Code.PROVIDER_UNAVAILABLE,
        )
    if failure is Failure.ANSWERED:
        status, detail = errors.status(exc)
        return answered_with_status(model if model is not None else base_url, status, detail)
    if failure is Failure.MALFORMED:
        return ProviderError(
            f"{prefix}malformed response: {short(str(exc))}", code=Code.BAD_RESPONSE
        )
    raise TypeError(f"{type(exc).__name__} is not in the {errors.sdk} error table")


@cache
def openai_errors() -> SdkErrors:
    import openai

    def status(exc: Exception) -> tuple[int, object]:
        if not isinstance(exc, openai.APIStatusError):  # pragma: no cover - see classify
            raise TypeError(type(exc).__name__)
        return exc.status_code, exc.message

    return SdkErrors(
        sdk="openai",
        unreachable=(openai.APIConnectionError,),
        answered=(openai.APIStatusError,),
        malformed=(openai.APIResponseValidationError, ValueError),
        status=status,
    )


@cache
def ollama_errors() -> SdkErrors:
    import httpx
    import ollama

    def status(exc: Exception) -> tuple[int, object]:
        if not isinstance(exc, ollama.ResponseError):  # pragma: no cover - see classify
            raise TypeError(type(exc).__name__)
        return exc.status_code, exc.error

    return SdkErrors(
        sdk="ollama",
        unreachable=(ConnectionError, httpx.TransportError),
        answered=(ollama.ResponseError,),
        malformed=(ValueError, KeyError),
        status=status,
    )
