"""Built-in output checkers for eval suites, registered like any third-party checker.

- ``exact``: ``value``; ``strip`` (default true) drops surrounding whitespace and then one
  trailing period from both the output and the value; ``ignore_case`` (default false).
- ``regex``: ``pattern`` in RE2 syntax (linear time, so a suite cannot stall on a long
  output); ``search`` (default true) finds it anywhere, false matches the whole output
  with surrounding whitespace dropped.
- ``numeric``: ``value``; passes within ``tolerance`` (absolute, default 0) or within
  ``relative`` (a fraction of ``value``, if given). The answer is the number in the last
  ``\\boxed{...}``, else the one after the last "answer:"/"answer is"/"####", else the last
  number in the output; "1,234", "-3", "3.5" and "1e3" are read as numbers.
- ``contains``: ``values`` (strings); ``all`` (default true) or any one; ``ignore_case``.
  With ``all``, the score is the fraction found.
- ``contract``: ``contract`` names a policy contract; passes when the output satisfies it.
- ``json_schema``: ``schema``, an inline JSON Schema (only when ``jsonschema`` is installed).

Reasons describe the output, never quote it: verdicts are stored and printed.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeGuard

import re2

from rolegate.plugins.base import CheckContext, Checker, Verdict
from rolegate.plugins.hookspecs import hookimpl
from rolegate.policy.contracts import check_output
from rolegate.policy.schema import Contract


@dataclass(frozen=True, slots=True)
class _Kind:
    test: Callable[[object], bool]
    what: str


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _strings(spec: Mapping[str, object], key: str) -> list[str]:
    value = spec.get(key)
    return [str(v) for v in value] if isinstance(value, list) else []


def _float(spec: Mapping[str, object], key: str) -> float | None:
    value = spec.get(key)
    return float(value) if _is_number(value) else None


_STR = _Kind(lambda v: isinstance(v, str), "a string")
_BOOL = _Kind(lambda v: isinstance(v, bool), "true or false")
_NUMBER = _Kind(_is_number, "a finite number")
_NOT_NEGATIVE = _Kind(lambda v: _is_number(v) and v >= 0, "a number, 0 or more")
_STRINGS = _Kind(
    lambda v: isinstance(v, list) and bool(v) and all(isinstance(s, str) and s for s in v),
    "a non-empty list of non-empty strings",
)
_MAPPING = _Kind(lambda v: isinstance(v, Mapping), "a mapping")
_PASS = Verdict(True, 1.0)


class _Base:
    """Checks a spec's keys and value types; subclasses add rules in ``_more``."""

    name: ClassVar[str]
    required: ClassVar[Mapping[str, _Kind]] = {}
    optional: ClassVar[Mapping[str, _Kind]] = {}

    def validate(self, spec: Mapping[str, object], contracts: Mapping[str, Contract]) -> None:
        where = f"check type {self.name!r}"
        allowed = {**self.required, **self.optional}
        unknown = sorted(str(k) for k in spec if k not in allowed)
        if unknown:
            raise ValueError(
                f"{where} has no option {', '.join(map(repr, unknown))}; "
                f"it takes {', '.join(sorted(allowed))}"
            )
        for key, kind in self.required.items():
            if key not in spec:
                raise ValueError(f"{where} needs {key!r} ({kind.what})")
        for key, value in spec.items():
            if not allowed[key].test(value):
                raise ValueError(f"{where}: {key!r} must be {allowed[key].what}")
        self._more(spec, contracts)

    def _more(self, spec: Mapping[str, object], contracts: Mapping[str, Contract]) -> None:
        return None


def _fail(reason: str, score: float = 0.0) -> Verdict:
    return Verdict(False, score, reason)


def _stripped(text: str) -> str:
    text = text.strip()
    return text[:-1].rstrip() if text.endswith(".") else text


class ExactChecker(_Base):
    name = "exact"
    required: ClassVar[Mapping[str, _Kind]] = {"value": _STR}
    optional: ClassVar[Mapping[str, _Kind]] = {"ignore_case": _BOOL, "strip": _BOOL}

    async def check(
        self, output: str, spec: Mapping[str, object], context: CheckContext
    ) -> Verdict:
        got, want = output, str(spec["value"])
        if spec.get("strip", True):
            got, want = _stripped(got), _stripped(want)
        if spec.get("ignore_case", False):
            got, want = got.casefold(), want.casefold()
        if got == want:
            return _PASS
        return _fail(f"the answer ({len(got)} characters) is not the expected value")


@functools.lru_cache(maxsize=256)
def _re2(pattern: str) -> Any:
    options = re2.Options()
    options.log_errors = False  # a bad pattern is reported by validate, not on stderr
    return re2.compile(pattern, options)


def _re2_reason(exc: Exception) -> str:
    arg = exc.args[0] if exc.args else exc
    return arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(arg)


class RegexChecker(_Base):
    name = "regex"
    required: ClassVar[Mapping[str, _Kind]] = {"pattern": _STR}
    optional: ClassVar[Mapping[str, _Kind]] = {"search": _BOOL}

    def _more(self, spec: Mapping[str, object], contracts: Mapping[str, Contract]) -> None:
        try:
            _re2(str(spec["pattern"]))
        except re2.error as exc:
            raise ValueError(
                f"check type 'regex': 'pattern' is not a valid RE2 pattern "
                f"({_re2_reason(exc)}); RE2 has no lookaround or backreferences"
            ) from None

    async def check(
        self, output: str, spec: Mapping[str, object], context: CheckContext
    ) -> Verdict:
        compiled = _re2(str(spec["pattern"]))
        if spec.get("search", True):
            found = compiled.search(output)
            return _PASS if found else _fail("the pattern does not occur in the answer")
        whole = compiled.fullmatch(output.strip())
        return _PASS if whole else _fail("the answer as a whole does not match the pattern")


# A sign only where it cannot be a hyphen ("3-5" is 3 and 5); thousands only in groups of 3.
_NUM = (
    r"(?<![\w.])([-+\u2212]?)((?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?:[eE]([-+]?\d+))?(?!\d)"
)
_NUM_RE = re.compile(_NUM)
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_MARKER = re.compile(r"(?:\banswer\b(?:\s+is\b)?\s*[:=]?|####)[\s$*]*", re.IGNORECASE)


def _number(match: re.Match[str]) -> float:
    sign, digits, exponent = match.groups()
    text = digits.replace(",", "") + (f"e{exponent}" if exponent else "")
    return -float(text) if sign in ("-", "\u2212") else float(text)


def answer_number(text: str) -> float | None:
    """The number an answer gives (see the module's docstring for where it is looked for)."""
    boxed = _BOXED.findall(text)
    if boxed:
        inside = list(_NUM_RE.finditer(boxed[-1]))
        if inside:
            return _number(inside[-1])
    for marker in reversed(list(_MARKER.finditer(text))):
        after = _NUM_RE.match(text, marker.end())
        if after:
            return _number(after)
    numbers = list(_NUM_RE.finditer(text))
    return _number(numbers[-1]) if numbers else None


class NumericChecker(_Base):
    name = "numeric"
    required: ClassVar[Mapping[str, _Kind]] = {"value": _NUMBER}
    optional: ClassVar[Mapping[str, _Kind]] = {
        "tolerance": _NOT_NEGATIVE,
        "relative": _NOT_NEGATIVE,
    }

    async def check(
        self, output: str, spec: Mapping[str, object], context: CheckContext
    ) -> Verdict:
        got = answer_number(output)
        if got is None:
            return _fail("no number in the answer")
        want = _float(spec, "value") or 0.0
        tolerance = _float(spec, "tolerance") or 0.0
        relative = _float(spec, "relative")
        off = abs(got - want)
        if off <= tolerance or (relative is not None and off <= relative * abs(want)):
            return _PASS
        if relative is None:
            return _fail(f"off by more than {tolerance:g}")
        return _fail(f"off by more than {tolerance:g} and by more than {relative:g} of the value")


class ContainsChecker(_Base):
    name = "contains"
    required: ClassVar[Mapping[str, _Kind]] = {"values": _STRINGS}
    optional: ClassVar[Mapping[str, _Kind]] = {"all": _BOOL, "ignore_case": _BOOL}

    async def check(
        self, output: str, spec: Mapping[str, object], context: CheckContext
    ) -> Verdict:
        values = _strings(spec, "values")
        fold = spec.get("ignore_case", False)
        text = output.casefold() if fold else output
        missing = [v for v in values if (v.casefold() if fold else v) not in text]
        if not spec.get("all", True):
            if len(missing) < len(values):
                return _PASS
            return _fail(f"none of the {len(values)} values occurs in the answer")
        if not missing:
            return _PASS
        # The values come from the suite, not from the output, so naming them is safe.
        shown = ", ".join(repr(v) for v in missing[:5]) + (", ..." if len(missing) > 5 else "")
        score = (len(values) - len(missing)) / len(values)
        return _fail(f"missing {len(missing)} of {len(values)} values: {shown}", score)


class ContractChecker(_Base):
    name = "contract"
    required: ClassVar[Mapping[str, _Kind]] = {"contract": _STR}

    def _more(self, spec: Mapping[str, object], contracts: Mapping[str, Contract]) -> None:
        if spec["contract"] not in contracts:
            raise ValueError(
                f"check type 'contract' names contract {spec['contract']!r}, which the policy "
                f"does not define (its contracts: {sorted(contracts)}); add it under the "
                "policy's 'contracts' or fix the name"
            )

    async def check(
        self, output: str, spec: Mapping[str, object], context: CheckContext
    ) -> Verdict:
        contract = context.contracts.get(str(spec["contract"]))
        if contract is None:
            return _fail(f"the policy has no contract {spec['contract']!r}")
        result = check_output(contract, output)
        # check_output's errors name keys and JSON types from the contract, never the text.
        return _PASS if result.valid else _fail(result.errors[0] if result.errors else "invalid")


_FENCE = re.compile(r"^\s*```(?:json)?\s*\n(.*?)\n\s*```\s*$", re.DOTALL)


def _parsed(output: str) -> tuple[object, str]:
    """The output's JSON value (inside a ``json`` fence or not), or a reason it has none."""
    body = output.strip()
    fenced = _FENCE.match(body)
    try:
        return json.loads(fenced.group(1) if fenced else body), ""
    except json.JSONDecodeError as exc:
        return None, f"not JSON: {exc.msg} at line {exc.lineno}"
    except RecursionError:
        return None, "not usable JSON: nested too deeply"
    except ValueError:  # e.g. an integer over Python's digit limit
        return None, "not usable JSON: a value is too large"


def _remote_refs(schema: object) -> bool:
    """Whether a ``$ref`` leaves the schema (it would need a fetch: never done)."""
    stack = [schema]
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            ref = item.get("$ref")
            if isinstance(ref, str) and not ref.startswith("#"):
                return True
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _jsonschema() -> Any:
    """The optional ``jsonschema`` module, imported on first use."""
    import jsonschema  # type: ignore[import-untyped]

    return jsonschema


class JsonSchemaChecker(_Base):
    """Registered only when ``jsonschema`` is installed; it is imported on first use."""

    name = "json_schema"
    required: ClassVar[Mapping[str, _Kind]] = {"schema": _MAPPING}

    def _more(self, spec: Mapping[str, object], contracts: Mapping[str, Contract]) -> None:
        js = _jsonschema()
        schema = spec["schema"]
        try:
            js.validators.validator_for(schema).check_schema(schema)
        except js.exceptions.SchemaError as exc:
            where = "/".join(str(p) for p in exc.path) or "its top level"
            raise ValueError(
                f"check type 'json_schema': 'schema' is not a valid JSON Schema at {where} "
                f"({exc.message}); fix the schema"
            ) from None
        if _remote_refs(schema):
            raise ValueError(
                "check type 'json_schema': 'schema' has a $ref outside itself; only local "
                "references ('#/...') are followed, so inline the referenced schema"
            )

    async def check(
        self, output: str, spec: Mapping[str, object], context: CheckContext
    ) -> Verdict:
        js = _jsonschema()
        data, reason = _parsed(output)
        if reason:
            return _fail(reason)
        schema = spec["schema"]
        try:
            error = js.exceptions.best_match(
                js.validators.validator_for(schema)(schema).iter_errors(data)
            )
        except RecursionError:
            return _fail("the JSON is nested too deeply to check")
        if error is None:
            return _PASS
        # The rule's path and value come from the schema; the output's values are not shown.
        rule = "/".join(str(p) for p in error.absolute_schema_path) or "(top level)"
        expected = json.dumps(error.validator_value)
        expected = expected if len(expected) <= 80 else expected[:77] + "..."
        return _fail(f"fails the schema's rule {rule} (expects {expected})")


@hookimpl
def register_checkers(register: Callable[[Checker], None]) -> None:
    for checker in (
        ExactChecker(),
        RegexChecker(),
        NumericChecker(),
        ContainsChecker(),
        ContractChecker(),
    ):
        register(checker)
    if importlib.util.find_spec("jsonschema") is not None:  # optional: no new dependency
        register(JsonSchemaChecker())
