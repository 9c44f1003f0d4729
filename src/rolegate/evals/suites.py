"""Eval suites: a named list of cases, each a prompt (or messages) and a ``check``.

A suite is a YAML or JSON file (see ``examples/evals/README.md``). ``load_suite`` reads and
validates its shape; ``validate_suite`` checks every case's ``check`` against the loaded
checkers and the policy's contracts, so a bad suite fails before any model is called.
Every problem is a ``RequestError`` (INVALID_ARGUMENT) naming the file and the place.

Reading is bounded like a policy's, with limits sized for suites: at most
``MAX_SUITE_BYTES`` from a regular file, ``MAX_CASES`` cases, ``MAX_DEPTH`` levels of
nesting, no YAML aliases (a suite never needs them, and refusing them rules out alias
bombs) and no key twice in one mapping. As in policies, only true/false are booleans.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import yaml
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
from yaml.constructor import ConstructorError
from yaml.events import AliasEvent, CollectionEndEvent, CollectionStartEvent
from yaml.nodes import MappingNode, ScalarNode

from rolegate.errors import Code, RequestError
from rolegate.plugins.base import Checker
from rolegate.policy.schema import Contract, Name
from rolegate.policy.strict import Strict

MAX_CASES = 10_000
MAX_SUITE_BYTES = 16 * 1024 * 1024
"""10,000 cases of a page of text each fit; a real suite is a few KiB."""
MAX_DEPTH = 32
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
    max_output_tokens: int | None = Field(default=None, ge=1)
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
    max_output_tokens: int | None = Field(default=None, ge=1)
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
    return suite_from_data(_parse(_read(p), p.suffix.lower(), str(p)), str(p))


def _read(path: Path) -> str:
    """The text of a regular file of at most MAX_SUITE_BYTES; never blocks on a FIFO."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise _error(str(path), [f"cannot read the suite: {exc.strerror or exc}"]) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _error(str(path), ["not a regular file; a suite must be a .yaml or .json file"])
        with os.fdopen(fd, "rb", closefd=False) as stream:
            raw = stream.read(MAX_SUITE_BYTES + 1)
    except OSError as exc:
        raise _error(str(path), [f"cannot read the suite: {exc.strerror or exc}"]) from None
    finally:
        os.close(fd)
    if len(raw) > MAX_SUITE_BYTES:
        raise _error(str(path), [f"too large: a suite may be at most {MAX_SUITE_BYTES:,} bytes"])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _error(str(path), [f"not UTF-8 text (bad byte at offset {exc.start})"]) from None


def _parse(text: str, suffix: str, source: str) -> object:
    if suffix == ".json":
        try:
            return json.loads(text, object_pairs_hook=_json_object)
        except json.JSONDecodeError as exc:
            raise _error(
                source, [f"line {exc.lineno}, column {exc.colno}: invalid JSON: {exc.msg}"]
            ) from None
        except ValueError as exc:  # a duplicate key
            raise _error(source, [f"invalid JSON: {exc}"]) from None
        except RecursionError:
            raise _error(source, ["invalid JSON: nested too deeply"]) from None
    if suffix not in (".yaml", ".yml"):
        raise _error(
            source, [f"unknown suite format {suffix or '(no suffix)'!r}; use .yaml, .yml or .json"]
        )
    try:
        _check_events(text, source)
        return yaml.load(text, Loader=_SuiteYaml)  # a safe loader (below)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise _error(source, [f"{where}invalid YAML: {problem}"]) from None


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key[:60]!r}")
        out[key] = value
    return out


_YamlBase: Any = yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader
_BOOL_TAG = "tag:yaml.org,2002:bool"


class _SuiteYaml(_YamlBase):  # type: ignore[misc]
    """Safe YAML with YAML 1.2 booleans and no key twice in one mapping."""

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[tuple[str, str], int] = {}
        for key_node, _ in node.value:
            if isinstance(key_node, ScalarNode):
                key = (key_node.tag, key_node.value)
                if key in first:
                    raise ConstructorError(
                        None,
                        None,
                        f"duplicate key {key_node.value[:60]!r} (first on line {first[key]})",
                        key_node.start_mark,
                    )
                first[key] = key_node.start_mark.line + 1
        result: dict[Any, Any] = super().construct_mapping(node, deep)
        return result


# As in policy files: yes/no/on/off stay strings (YAML 1.1 read them as booleans).
_SuiteYaml.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _BOOL_TAG]
    for first, resolvers in _YamlBase.yaml_implicit_resolvers.items()
}
_SuiteYaml.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _check_events(text: str, source: str) -> None:
    """Refuse aliases and deep nesting from the event stream, before anything is built."""
    depth = 0
    for event in yaml.parse(text, Loader=_SuiteYaml):
        mark = event.start_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(unknown line)"
        if isinstance(event, AliasEvent):
            raise _error(source, [f"{where}: aliases (*name) are not allowed; repeat the value"])
        if isinstance(event, CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise _error(source, [f"{where}: nested more than {MAX_DEPTH} levels deep"])
        elif isinstance(event, CollectionEndEvent):
            depth -= 1
