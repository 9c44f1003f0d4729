"""Eval suites: a named list of cases, each a prompt (or messages) and a ``check``.

A suite is a YAML or JSON file (see ``examples/evals/README.md``). ``load_suite`` reads and
validates its shape; ``validate_suite`` checks every case's ``check`` against the loaded
checkers and the policy's contracts, so a bad suite fails before any model is called.
Every problem is a ``RequestError`` (INVALID_ARGUMENT) naming the file and the place.

Reading and parsing are the policy loader's (``read_policy_file``, ``parse_text``), with
limits sized for suites: at most ``MAX_SUITE_BYTES`` from a regular file and
``MAX_SUITE_VALUES`` values (YAML aliases expanded), then at most ``MAX_CASES`` cases. Its
other guards hold as for a policy: nesting, duplicate keys, only true/false as booleans.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
    with_config,
)
from typing_extensions import TypedDict

from rolegate.errors import Code, PolicyLoadError, RequestError
from rolegate.plugins.base import Checker
from rolegate.policy.limits import MAX_TOKENS
from rolegate.policy.loader import Limits, parse_text, read_policy_file
from rolegate.policy.schema import Contract
from rolegate.policy.strict import Name, Strict

MAX_CASES = 10_000
MAX_SUITE_BYTES = 16 * 1024 * 1024
"""10,000 cases of a page of text each fit; a real suite is a few KiB."""
MAX_SUITE_VALUES = 1_000_000
"""100 values a case at 10,000 cases; a real case holds about 13."""
SUITE_LIMITS = Limits("suite", MAX_SUITE_BYTES, MAX_SUITE_VALUES)
_FORMATS = {".yaml": "yaml", ".yml": "yaml", ".json": "json"}
MAX_SHOWN = 50
"""Most problems one error lists; the rest are counted."""


@with_config(ConfigDict(extra="forbid"))
class ChatMessage(TypedDict):
    role: Literal["system", "user", "assistant"]
    content: str


class Case(Strict):
    """One prompt (``prompt`` or ``messages``, exactly one) and how to check the answer."""

    id: Name
    prompt: str | None = Field(default=None, min_length=1)
    messages: tuple[ChatMessage, ...] | None = None
    system: str | None = None  # overrides the suite's
    max_output_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    check: dict[str, Any]

    @field_validator("check")
    @classmethod
    def _has_type(cls, value: dict[str, Any]) -> dict[str, Any]:
        kind = value.get("type")
        if not isinstance(kind, str) or not kind:
            raise ValueError("needs 'type', the checker's name (e.g. {type: exact, value: ...})")
        return value

    @field_validator("messages")
    @classmethod
    def _some_messages(
        cls, value: tuple[ChatMessage, ...] | None
    ) -> tuple[ChatMessage, ...] | None:
        # After the messages are valid, so a bad one is not also a too-short list.
        if value == ():
            raise ValueError("is empty; give at least one message, or use 'prompt'")
        return value

    @model_validator(mode="after")
    def _one_input(self) -> Case:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' and 'messages'")
        return self

    @property
    def check_type(self) -> str:
        return str(self.check["type"])

    def check_spec(self) -> dict[str, object]:
        """The ``check`` mapping without ``type``: what the checker receives."""
        return {k: v for k, v in self.check.items() if k != "type"}

    def chat(self) -> tuple[str | None, list[dict[str, str]] | None]:
        """(prompt, messages), one of them None."""
        if self.messages is None:
            return self.prompt, None
        return None, [{"role": m["role"], "content": m["content"]} for m in self.messages]


class Suite(Strict):
    name: Name
    description: str | None = None
    system: str | None = None  # every case's system prompt unless the case has its own
    max_output_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    cases: tuple[Case, ...]
    _source: str = PrivateAttr(default="<suite>")

    @field_validator("cases")
    @classmethod
    def _some_cases(cls, value: tuple[Case, ...]) -> tuple[Case, ...]:
        # An after-validator: it runs only when every case is valid, so a bad case is
        # not also reported as a too-short list.
        if not value:
            raise ValueError("is empty; add at least one case")
        if len(value) > MAX_CASES:
            raise ValueError(f"{len(value):,} cases; a suite holds at most {MAX_CASES:,}")
        return value

    @property
    def source(self) -> str:
        """Where the suite was read from (not part of its hash)."""
        return self._source

    @cached_property
    def hash(self) -> str:
        """'sha256:' and 16 hex digits of the parsed suite's canonical JSON: formatting,
        comments, key order and the file's format do not change it; any value does."""
        data = self.model_dump(mode="json", exclude_none=True)
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def _error(source: str, problems: list[str]) -> RequestError:
    if len(problems) == 1:
        return RequestError(f"{source}: {problems[0]}", code=Code.INVALID_ARGUMENT)
    shown = problems[:MAX_SHOWN]
    if len(problems) > MAX_SHOWN:
        shown.append(f"... and {len(problems) - MAX_SHOWN} more")
    lines = "\n".join(f"{source}: {p}" for p in shown)
    return RequestError(
        f"{source} has {len(problems)} problems:\n{lines}", code=Code.INVALID_ARGUMENT
    )


def _location(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


_MESSAGES = {
    "missing": "required; add it",
    "extra_forbidden": "unknown key (not part of the suite format; check the spelling)",
    "string_pattern_mismatch": "must be a name: letters, digits and ._:/@+- , starting "
    "with a letter or digit",
}


def _message(err: Any) -> str:
    # Only pydantic's message, never the input: it may be a long prompt.
    kind = str(err.get("type", ""))
    return _MESSAGES.get(kind) or str(err.get("msg", "invalid")).removeprefix("Value error, ")


def suite_from_data(data: object, source: str) -> Suite:
    """Validate parsed data as a suite; raise with every problem at once."""
    if not isinstance(data, dict):
        raise _error(source, ["(top level): a suite is a mapping with 'name' and 'cases'"])
    cases = data.get("cases")
    # Also checked by the model; here first, so a huge file is refused before validation.
    if isinstance(cases, list) and len(cases) > MAX_CASES:
        raise _error(source, [f"cases: {len(cases):,} cases; a suite holds at most {MAX_CASES:,}"])
    try:
        suite = Suite.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_input=False, include_url=False)
        raise _error(
            source, [f"{_location(tuple(e['loc']))}: {_message(e)}" for e in errors]
        ) from None
    first: dict[str, int] = {}
    problems = []
    for i, case in enumerate(suite.cases):
        if case.id in first:
            problems.append(
                f"cases[{i}].id: duplicate id {case.id!r} (first at "
                f"cases[{first[case.id]}]); give every case its own id"
            )
        first.setdefault(case.id, i)
    if problems:
        raise _error(source, problems)
    suite._source = source
    return suite


def validate_suite(
    suite: Suite, checkers: Mapping[str, Checker], contracts: Mapping[str, Contract]
) -> None:
    """Check every case's ``check`` with its checker; raise one error listing every problem.

    ``checkers`` is ``Registry.checkers``; ``contracts`` is the policy's ``doc.contracts``.
    """
    problems = []
    for i, case in enumerate(suite.cases):
        checker = checkers.get(case.check_type)
        if checker is None:
            problems.append(
                f"cases[{i}].check.type: case {case.id!r} uses checker {case.check_type!r}, "
                f"which no loaded plugin provides (loaded checkers: {sorted(checkers)}); fix "
                "the type or install the plugin that provides it"
            )
            continue
        try:
            checker.validate(case.check_spec(), contracts)
        except ValueError as exc:
            problems.append(f"cases[{i}].check: case {case.id!r}: {exc}")
    if problems:
        raise _error(suite.source, problems)


def load_suite(path: str | Path) -> Suite:
    """Read, parse and validate the suite at ``path`` (its checks: ``validate_suite``)."""
    p = Path(path)
    fmt = _FORMATS.get(p.suffix.lower())
    if fmt is None:
        suffix = p.suffix or "(no suffix)"
        raise _error(str(p), [f"unknown suite format {suffix!r}; use .yaml, .yml or .json"])
    try:
        data = parse_text(read_policy_file(p, SUITE_LIMITS), fmt, str(p), SUITE_LIMITS)
    except PolicyLoadError as exc:  # the same located sentence, as the caller's mistake
        raise RequestError(exc.message, code=Code.INVALID_ARGUMENT) from None
    return suite_from_data(data, str(p))
