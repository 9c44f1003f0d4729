"""Assembling the service from a policy: plugins, providers, ledger."""

from __future__ import annotations

from collections.abc import Iterable

from rolegate.policy import Policy
from rolegate.server.service import Rolegate


def build_service(
    policy: Policy, *, block: Iterable[str] = (), ledger_url: str | None = None
) -> Rolegate:
    return Rolegate(policy)
