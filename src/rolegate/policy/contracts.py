"""Checking a role's output against its contract (a JSON object with required keys)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from rolegate.policy.schema import Contract

#: Deeper structured output is a violation (returned as text, never parsed into a result).
MAX_DEPTH = 64
_FENCE = re.compile(r"^\s*```(?:json)?\s*\n(.*?)\n\s*```\s*$", re.DOTALL)


@dataclass(frozen=True, slots=True)
class ContractResult:
    valid: bool
    structured: dict[str, Any] | None
    errors: tuple[str, ...]
    confidence: float | None = None


def check_output(contract: Contract, text: str) -> ContractResult:
    """Parse ``text`` as the contract's JSON object; report every violation."""
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1)
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        return ContractResult(False, None, (f"not JSON: {exc.msg} at line {exc.lineno}",))
    except RecursionError:
        return ContractResult(False, None, ("not usable JSON: nested too deeply",))
    except ValueError as exc:  # e.g. an integer over Python's digit limit
        return ContractResult(False, None, (f"not usable JSON: {str(exc)[:200]}",))
    if _depth(data) > MAX_DEPTH:
        return ContractResult(False, None, (f"nested deeper than {MAX_DEPTH} levels",))
    if not isinstance(data, dict):
        return ContractResult(False, None, (f"expected a JSON object, got {type(data).__name__}",))
    errors = [f"missing required key {k!r}" for k in contract.required if k not in data]
    for key, kind in contract.types.items():
        if key in data and not _is_type(data[key], kind):
            errors.append(f"{key!r} must be of JSON type {kind}")
        elif (
            kind == "array"
            and contract.max_items is not None
            and len(data.get(key, ())) > contract.max_items
        ):
            errors.append(f"{key!r} has {len(data[key])} items; at most {contract.max_items}")
    confidence: float | None = None
    if contract.confidence_field is not None and contract.confidence_field in data:
        value = data[contract.confidence_field]
        if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1:
            confidence = float(value)
        else:
            errors.append(f"{contract.confidence_field!r} must be a number from 0 to 1")
    if errors:
        return ContractResult(False, None, tuple(errors), confidence)
    return ContractResult(True, data, (), confidence)


def _is_type(value: object, kind: str) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "array":
        return isinstance(value, list)
    return isinstance(value, dict)  # "object"


def _depth(value: object) -> int:
    """How deeply lists and objects nest, without recursion."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            if level <= MAX_DEPTH:
                inner = item.values() if isinstance(item, dict) else item
                stack.extend((child, level + 1) for child in inner)
    return deepest
