"""One table maps both built-in clients' SDK exceptions to codes (no server needed)."""

from __future__ import annotations

import httpx
import httpx2
import ollama
import openai
import pytest

from rolegate.errors import Code
from rolegate.plugins.builtin import ollama_client, openai_client
from rolegate.plugins.builtin.errors import (
    Failure,
    SdkErrors,
    ollama_errors,
    openai_errors,
    to_provider_error,
)

URL = "http://127.0.0.1:9/v1"
REQUEST = httpx2.Request("POST", URL + "/chat/completions")


def status_error(status: int) -> openai.APIStatusError:
    response = httpx2.Response(status, request=REQUEST, json={"error": "busy"})
    return openai.APIStatusError("busy", response=response, body=None)


def test_both_clients_use_the_shared_table() -> None:
    assert openai_client.ERRORS is openai_errors()
    assert ollama_client.ERRORS is ollama_errors()


@pytest.mark.parametrize(
    ("exc", "failure"),
    [
        (openai.APIConnectionError(request=REQUEST), Failure.UNREACHABLE),
        (openai.APITimeoutError(request=REQUEST), Failure.UNREACHABLE),
        (status_error(500), Failure.ANSWERED),
        (
            openai.APIResponseValidationError(httpx2.Response(200, request=REQUEST), None),
            Failure.MALFORMED,
        ),
        (ValueError("bad json"), Failure.MALFORMED),
        (RuntimeError("not ours"), None),
    ],
)
def test_openai_rows(exc: Exception, failure: Failure | None) -> None:
    assert openai_errors().classify(exc) is failure


@pytest.mark.parametrize(
    ("exc", "failure"),
    [
        (ConnectionRefusedError(), Failure.UNREACHABLE),
        (httpx.ConnectError("refused"), Failure.UNREACHABLE),
        (ollama.ResponseError("boom", 500), Failure.ANSWERED),
        (KeyError("message"), Failure.MALFORMED),
        (ValueError("bad json"), Failure.MALFORMED),
        (RuntimeError("not ours"), None),
    ],
)
def test_ollama_rows(exc: Exception, failure: Failure | None) -> None:
    assert ollama_errors().classify(exc) is failure


@pytest.mark.parametrize(
    ("errors", "exc"),
    [
        (openai_errors(), openai.APIConnectionError(request=REQUEST)),
        (ollama_errors(), httpx.ReadError("reset")),
    ],
    ids=["openai", "ollama"],
)
def test_unreachable_before_and_after_output(errors: SdkErrors, exc: Exception) -> None:
    before = to_provider_error(errors, exc, model="m", base_url=URL)
    assert before.code == Code.PROVIDER_UNAVAILABLE
    assert before.message.startswith(f"m: cannot reach {URL}: ")
    assert not before.answered
    assert before.partial_output_tokens is None
    after = to_provider_error(
        errors, exc, model="m", base_url=URL, received=True, chunks=4, output_tokens=None
    )
    assert after.code == Code.PROVIDER_ERROR
    assert after.message.startswith("m: the stream broke after 4 chunk(s)")
    assert after.partial_output_tokens == 4


@pytest.mark.parametrize(
    ("status", "code"),
    [(500, Code.PROVIDER_ERROR), (503, Code.PROVIDER_UNAVAILABLE), (401, Code.PROVIDER_ERROR)],
)
def test_answered_status_maps_the_same_for_both_sdks(status: int, code: Code) -> None:
    for errors, exc in (
        (openai_errors(), status_error(status)),
        (ollama_errors(), ollama.ResponseError("busy", status)),
    ):
        err = to_provider_error(errors, exc, model="m", base_url=URL)
        assert err.code == code, errors.sdk
        assert err.answered, errors.sdk
        assert err.message.startswith(f"m: server answered HTTP {status}: busy"), err.message


def test_malformed_and_listing_messages() -> None:
    bad = to_provider_error(ollama_errors(), KeyError("eval_count"), model="m", base_url=URL)
    assert (bad.code, bad.message) == (Code.BAD_RESPONSE, "m: malformed response: 'eval_count'")
    listing = to_provider_error(
        openai_errors(), openai.APIConnectionError(request=REQUEST), model=None, base_url=URL
    )
    assert listing.code == Code.PROVIDER_UNAVAILABLE
    assert listing.message == f"cannot reach {URL}: Connection error."


def test_an_exception_outside_the_table_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="not in the openai error table"):
        to_provider_error(openai_errors(), RuntimeError("x"), model="m", base_url=URL)
