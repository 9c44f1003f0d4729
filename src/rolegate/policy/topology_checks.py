"""Checks of the declared topology that need no file and no network: each server on its
own loopback port, memory declared where it is accounted, and the HOT set within memory.
(Files and draft vocabularies are checked by ``rolegate check`` through rolegate.topology.)
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from rolegate.errors import PolicyProblem
from rolegate.policy.problems import error, warning
from rolegate.policy.schema import PolicyDocument

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def server_address(base_url: str) -> tuple[str, int] | None:
    """(host, port) of a provider URL a local server can listen on, or None."""
    try:
        parts = urlsplit(base_url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme != "http" or parts.hostname not in LOOPBACK or port is None:
        return None
    return parts.hostname, port


def managed(doc: PolicyDocument, mid: str) -> bool:
    """Is this model's residency tracked: a server rolegate starts, or an Ollama model?"""
    model = doc.models[mid]
    provider = doc.providers.get(model.provider)
    return model.server is not None or (
        doc.residency is not None and provider is not None and provider.type == "ollama"
    )


def check_topology(doc: PolicyDocument) -> Iterable[PolicyProblem]:
    ports: dict[tuple[str, int], str] = {}
    for mid, model in sorted(doc.models.items()):
        at = f"models.{mid}"
        provider = doc.providers.get(model.provider)
        if model.server is not None and provider is not None:
            address = server_address(provider.base_url)
            if provider.type != "openai":
                yield error(
                    f"{at}.server",
                    f"provider {model.provider!r} must have type "
                    "'openai' (llama-server speaks the OpenAI API)",
                )
            if address is None:
                yield error(
                    f"{at}.server",
                    f"provider {model.provider!r} needs a base_url "
                    "like http://127.0.0.1:8080/v1 (loopback, explicit port) for the "
                    "server rolegate starts",
                )
            elif address[1] in {port for _, port in ports}:
                other = next(m for (_, port), m in ports.items() if port == address[1])
                yield error(
                    f"{at}.server",
                    f"port {address[1]} is already {other}'s server; "
                    "each server needs its own provider and port",
                )
            else:
                ports[address] = mid
        if doc.residency is not None and managed(doc, mid) and model.memory_gb is None:
            yield error(
                f"{at}.memory_gb",
                "a model whose residency is tracked needs "
                "'memory_gb' (what it takes when loaded) to be accounted",
            )
    if doc.residency is None:
        if ports:
            yield warning(
                "residency",
                "models declare servers but no 'residency': `rolegate "
                "up` starts them, the server never loads or evicts on demand",
            )
        return
    hot = [m for m in doc.models if managed(doc, m) and doc.models[m].tier == "hot"]
    hot_gb = sum(doc.models[m].memory_gb or 0.0 for m in hot)
    if hot_gb > doc.residency.memory_gb:
        yield error(
            "residency.memory_gb",
            f"the HOT models ({', '.join(sorted(hot))}) take "
            f"{hot_gb:g} GB, more than the {doc.residency.memory_gb:g} GB declared",
        )
    for mid, model in sorted(doc.models.items()):
        need = (model.memory_gb or 0.0) + hot_gb * (model.tier != "hot")
        if (
            managed(doc, mid)
            and model.tier != "hot"
            and model.memory_gb is not None  # a missing memory_gb is reported above
            and need > doc.residency.memory_gb
        ):
            yield error(
                f"models.{mid}.memory_gb",
                f"{mid} ({model.memory_gb:g} GB) cannot be "
                f"loaded next to the HOT models ({hot_gb:g} GB) within "
                f"{doc.residency.memory_gb:g} GB",
            )
