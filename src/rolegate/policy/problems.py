"""Helpers every policy check uses: problems by severity, and a model's locality."""

from __future__ import annotations

from rolegate.errors import PolicyProblem
from rolegate.policy.schema import Model, PolicyDocument


def model_locality(doc: PolicyDocument, model: Model) -> str:
    provider = doc.providers.get(model.provider)
    if model.locality is not None:
        return model.locality
    return provider.locality if provider is not None else "cloud"


def error(location: str, message: str) -> PolicyProblem:
    return PolicyProblem(location, message, "error")


def warning(location: str, message: str) -> PolicyProblem:
    return PolicyProblem(location, message, "warning")
