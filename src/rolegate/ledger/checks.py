"""The argument checks every work-store implementation shares, and the refusals it raises.

Records hold ids, names, models, numbers and codes, never prompt or completion text: every
record is encoded by ``audit_json``, which refuses a text-carrying key at any depth.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from rolegate.errors import Code, RefusedError, RequestError

#: Keys an audit record may never carry, at any depth: the trail holds no prompt or output.
FORBIDDEN_AUDIT_KEYS = frozenset({"prompt", "completion", "messages", "text", "output"})


def audit_json(record: Mapping[str, object], *, what: str = "audit") -> str:
    """The record as JSON, refusing any key that would carry prompt or completion text.

    ``what`` names the record in the error ("audit", "decision").
    """
    _check_keys(record, f"{what} record")
    return json.dumps(record, sort_keys=True, separators=(",", ":"), default=str)


def _check_keys(value: object, where: str) -> None:
    found = _text_key(value)
    if found is not None:
        path, key = found
        raise ValueError(
            f"{where}{path} has key {key!r}: the ledger never stores prompt or "
            "completion text; record token counts instead"
        )


#: Values that hold no keys: skipped without a call.
_SCALARS = (str, int, float, type(None))


def _text_key(value: object) -> tuple[str, object] | None:
    """(path of the mapping, key) of the first forbidden key at any depth, or None.

    Runs on every record written: the path is only built on the way out of a hit, and the
    plain dict/list cases are tested before the (slower) abstract Mapping check.
    """
    if isinstance(value, dict) or (
        not isinstance(value, list | tuple) and isinstance(value, Mapping)
    ):
        for key, inner in value.items():
            if str(key).lower() in FORBIDDEN_AUDIT_KEYS:
                return "", key
            if isinstance(inner, _SCALARS):
                continue
            found = _text_key(inner)
            if found is not None:
                return f".{key}{found[0]}", found[1]
    elif isinstance(value, list | tuple):
        for i, inner in enumerate(value):
            found = None if isinstance(inner, _SCALARS) else _text_key(inner)
            if found is not None:
                return f"[{i}]{found[0]}", found[1]
    return None


# -- the work store's argument checks, shared by every implementation -------------------


def storable(value: object) -> bool:
    """Whether ``value`` is a str every store keeps as is (no NUL, valid UTF-8)."""
    if not isinstance(value, str) or "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # an unpaired surrogate: neither SQLite nor PostgreSQL takes it
        return False
    return True


def check_text(name: str, value: object) -> str:
    """``value`` if it is a storable str, else RequestError (INVALID_ARGUMENT)."""
    if not storable(value):
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise RequestError(
            f"{name} must be a string without NUL characters or unpaired surrogates, got {shown}",
            code=Code.INVALID_ARGUMENT,
        )
    return str(value)


def check_texts(**values: str) -> dict[str, str]:
    """Each argument checked storable (RequestError names the first that is not)."""
    return {name: check_text(name, value) for name, value in values.items()}


def check_optional_text(name: str, value: object) -> str | None:
    return None if value is None else check_text(name, value)


def check_names(name: str, values: object) -> list[str]:
    """A sequence of storable strings (a bare str is refused: it is not a list of names)."""
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        raise RequestError(f"{name} must be a list of strings, got {values!r}")
    return [check_text(f"{name}[{i}]", value) for i, value in enumerate(values)]


def check_verdict(value: object) -> bool | None:
    """A contract verdict: True, False or None (no contract)."""
    if value is not None and type(value) is not bool:
        raise RequestError(f"contract_valid must be True, False or None, got {value!r}")
    return value


def check_step(value: object) -> int:
    if type(value) is not int or value < 0:
        raise RequestError(f"step must be an int >= 0, got {value!r}")
    return value


def owner_refusal(task_id: str, stage: str, model: str) -> RefusedError:
    return RefusedError(
        f"stage {stage!r} of task {task_id!r} already has its owner output (from {model}); "
        "a second authoritative run needs an escalation first",
        code=Code.CONSENSUS_FORBIDDEN,
    )


def claimed_refusal(task_id: str, stage: str) -> RefusedError:
    return RefusedError(
        f"stage {stage!r} of task {task_id!r} is being written by another run now "
        "(one owner per stage)",
        code=Code.CONSENSUS_FORBIDDEN,
    )


def lost_claim_refusal(task_id: str, stage: str, request_id: str) -> RefusedError:
    return RefusedError(
        f"request {request_id!r} holds no claim on stage {stage!r} of task {task_id!r} (its "
        "lease expired and another run took the stage over, or it never claimed it); its "
        "output is not the stage's owner output",
        code=Code.CONSENSUS_FORBIDDEN,
    )


def decision_reused(decision_id: str) -> RequestError:
    return RequestError(
        f"decision_id {decision_id!r} was already used; every decision needs a fresh one",
        code=Code.INVALID_ARGUMENT,
    )
