"""The built-in output checkers, registered through the plugin registry like any other."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pytest

from rolegate.errors import PluginError
from rolegate.plugins.base import CheckContext, Checker, Verdict
from rolegate.plugins.builtin.checkers import RegexChecker, answer_number
from rolegate.plugins.hookspecs import hookimpl
from rolegate.plugins.manager import Registry, build_registry
from rolegate.policy.schema import Contract

BUILTIN = ["exact", "regex", "numeric", "contains", "contract", "json_schema"]
INVOICE = Contract(
    required=("vendor", "total", "currency"),
    types={"vendor": "string", "total": "number", "currency": "string"},
)
CONTRACTS: Mapping[str, Contract] = {"invoice": INVOICE}


@pytest.fixture(scope="module")
def registry() -> Registry:
    return build_registry(load_entry_points=False)


async def verdict(registry: Registry, output: str, kind: str, **spec: object) -> Verdict:
    checker = registry.checkers[kind]
    checker.validate(spec, CONTRACTS)  # every spec used here must be valid
    return await checker.check(output, spec, CheckContext("case-1", "model-a", CONTRACTS))


def refusal(registry: Registry, kind: str, **spec: object) -> str:
    with pytest.raises(ValueError, match=r"\S") as info:
        registry.checkers[kind].validate(spec, CONTRACTS)
    return str(info.value)


def test_the_builtins_are_a_plugin_like_any_other(registry: Registry) -> None:
    assert set(BUILTIN) <= set(registry.checkers)
    info = next(p for p in registry.plugins if p.name == "checkers")
    assert info.distribution == "rolegate (built-in)"
    assert info.provides == [f"checker:{name}" for name in BUILTIN]
    assert all(registry.checkers[name].name == name for name in BUILTIN)


def test_blocking_the_builtin_checkers() -> None:
    assert build_registry(block=["checkers"], load_entry_points=False).checkers == {}


class SecondRegex:
    @hookimpl
    def register_checkers(self, register: Callable[[Checker], None]) -> None:
        register(RegexChecker())


def test_a_duplicate_checker_name_is_refused_naming_both_plugins() -> None:
    with pytest.raises(PluginError) as info:
        build_registry(extra_plugins=[SecondRegex()], load_entry_points=False)
    assert "checker 'regex' is registered by both plugin" in info.value.message
    assert "plugin 'checkers'" in info.value.message


@pytest.mark.parametrize(
    ("output", "spec", "passed"),
    [
        ("Paris", {}, True),
        ("  Paris.\n", {}, True),  # strip: whitespace, then one trailing period
        ("Paris..", {}, False),
        ("paris", {}, False),
        ("paris", {"ignore_case": True}, True),
        (" Paris", {"strip": False}, False),
        ("Paris, France", {}, False),
    ],
)
async def test_exact(
    registry: Registry, output: str, spec: dict[str, object], passed: bool
) -> None:
    result = await verdict(registry, output, "exact", value="Paris", **spec)
    assert (result.passed, result.score) == (passed, 1.0 if passed else 0.0)


async def test_a_reason_never_quotes_the_output(registry: Registry) -> None:
    secret = "hunter2-secret-words"
    failures = [
        await verdict(registry, secret, "exact", value="x"),
        await verdict(registry, secret, "regex", pattern="^nope$"),
        await verdict(registry, secret + " 99", "numeric", value=1),
        await verdict(registry, secret, "contains", values=["absent"]),
        await verdict(registry, secret, "contract", contract="invoice"),
        await verdict(
            registry,
            '{"vendor": "' + secret + '", "total": "99"}',
            "json_schema",
            schema={"properties": {"total": {"type": "number"}}},
        ),
    ]
    for failed in failures:
        assert not failed.passed
        assert failed.reason
        assert "hunter2" not in failed.reason
        assert "99" not in failed.reason


@pytest.mark.parametrize(
    ("output", "search", "passed"),
    [
        ("the function def add(a, b): ...", True, True),
        ("the function def add(a, b): ...", False, False),
        ("  def add(a, b)\n", False, True),  # a whole match ignores surrounding whitespace
        ("def sub(a, b)", True, False),
    ],
)
async def test_regex_search_and_full_match(
    registry: Registry, output: str, search: bool, passed: bool
) -> None:
    result = await verdict(registry, output, "regex", pattern=r"def add\(a, b\)", search=search)
    assert result.passed is passed


async def test_regex_matches_anything_with_dotall(registry: Registry) -> None:
    assert (await verdict(registry, "", "regex", pattern="(?s).*", search=False)).passed
    assert (await verdict(registry, "a\nb", "regex", pattern="(?s).*", search=False)).passed


def test_bad_regex_patterns_are_refused_at_validate(registry: Registry) -> None:
    assert "not a valid RE2 pattern (missing ): (" in refusal(registry, "regex", pattern="(")
    message = refusal(registry, "regex", pattern="(?<=a)b")
    assert "RE2 has no lookaround or backreferences" in message


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("42", 42),
        ("The answer is -3.", -3),
        ("x = \u22127", -7),
        ("1,234 apples", 1234),
        ("1,2,3", 3),
        ("it costs 3.5", 3.5),
        ("1e3", 1000),
        ("2.5E-3", 0.0025),
        ("pages 3-5", 5),
        ("so 2 + 3 = 5", 5),
        ("\\boxed{12}, and then 7 more", 12),
        ("\\boxed{x = 1,500}", 1500),
        ("Answer: 9. Check: 3 + 6 = 9, 10 total", 9),
        ("the answer is $1,234.50 in all", 1234.5),
        ("#### 72", 72),
        ("version v2 of 10", 10),
        ("no number here", None),
        ("", None),
    ],
)
def test_the_number_an_answer_gives(text: str, number: float | None) -> None:
    assert answer_number(text) == number


@pytest.mark.parametrize(
    ("output", "spec", "passed", "reason"),
    [
        ("The sum is 42.", {}, True, ""),
        ("41", {}, False, "off by more than 0"),
        ("3.14159", {"value": 3.14, "tolerance": 0.01}, True, ""),
        ("3.16", {"value": 3.14, "tolerance": 0.01}, False, "off by more than 0.01"),
        ("1001", {"value": 1000, "relative": 0.001}, True, ""),
        ("1002", {"value": 1000, "relative": 0.001}, False, "and by more than 0.001 of the value"),
        ("I cannot say", {}, False, "no number in the answer"),
        ("1e999", {}, False, "off by more than 0"),  # infinity is a number, and far off
    ],
)
async def test_numeric(
    registry: Registry, output: str, spec: dict[str, object], passed: bool, reason: str
) -> None:
    result = await verdict(registry, output, "numeric", **{"value": 42, **spec})
    assert result.passed is passed
    assert reason in result.reason


async def test_contains(registry: Registry) -> None:
    values = ["alpha", "beta", "gamma", "delta"]
    both = await verdict(registry, "alpha and beta", "contains", values=values)
    assert (both.passed, both.score) == (False, 0.5)
    assert both.reason == "missing 2 of 4 values: 'gamma', 'delta'"
    folded = await verdict(registry, "ALPHA beta", "contains", values=values[:2], ignore_case=True)
    assert folded.passed
    assert not (await verdict(registry, "ALPHA beta", "contains", values=values[:2])).passed
    anyone = await verdict(registry, "just delta", "contains", values=values, all=False)
    assert (anyone.passed, anyone.score) == (True, 1.0)
    none = await verdict(registry, "nothing", "contains", values=values, all=False)
    assert none.reason == "none of the 4 values occurs in the answer"


@pytest.mark.parametrize(
    ("output", "passed", "reason"),
    [
        ('{"vendor": "Acme", "total": 12.5, "currency": "EUR"}', True, ""),
        ('```json\n{"vendor": "Acme", "total": 12, "currency": "EUR"}\n```', True, ""),
        ('{"vendor": "Acme", "currency": "EUR"}', False, "missing required key 'total'"),
        ('{"vendor": "Acme", "total": "12", "currency": "EUR"}', False, "'total' must be of JSON"),
        ("The total is 12 EUR.", False, "not JSON: Expecting value at line 1"),
        ("[1, 2]", False, "expected a JSON object, got list"),
    ],
)
async def test_contract(registry: Registry, output: str, passed: bool, reason: str) -> None:
    result = await verdict(registry, output, "contract", contract="invoice")
    assert (result.passed, result.score) == (passed, 1.0 if passed else 0.0)
    assert result.reason.startswith(reason)


async def test_a_contract_gone_from_the_policy_fails_the_case(registry: Registry) -> None:
    checker = registry.checkers["contract"]
    context = CheckContext("case-1", "model-a", {})
    result = await checker.check("{}", {"contract": "invoice"}, context)
    assert (result.passed, result.reason) == (False, "the policy has no contract 'invoice'")


def test_an_unknown_contract_is_refused_at_validate(registry: Registry) -> None:
    message = refusal(registry, "contract", contract="receipt")
    assert "names contract 'receipt', which the policy does not define" in message
    assert "(its contracts: ['invoice'])" in message


SCHEMA = {
    "type": "object",
    "required": ["total"],
    "properties": {"total": {"type": "number", "minimum": 0}},
}


@pytest.mark.parametrize(
    ("output", "passed", "reason"),
    [
        ('{"total": 3}', True, ""),
        ('```json\n{"total": 3}\n```', True, ""),
        ('{"total": -3}', False, "fails the schema's rule properties/total/minimum (expects 0)"),
        ("{}", False, 'fails the schema\'s rule required (expects ["total"])'),
        ("total: 3", False, "not JSON: Expecting value at line 1"),
    ],
)
async def test_json_schema(registry: Registry, output: str, passed: bool, reason: str) -> None:
    result = await verdict(registry, output, "json_schema", schema=SCHEMA)
    assert (result.passed, result.reason) == (passed, reason)


def test_bad_json_schemas_are_refused_at_validate(registry: Registry) -> None:
    message = refusal(registry, "json_schema", schema={"type": "strin"})
    assert "'schema' is not a valid JSON Schema at type" in message
    remote = refusal(registry, "json_schema", schema={"$ref": "https://example.com/s.json"})
    assert "only local references ('#/...') are followed" in remote


@pytest.mark.parametrize(
    ("kind", "spec", "message"),
    [
        ("exact", {}, "check type 'exact' needs 'value' (a string)"),
        ("exact", {"value": 3}, "check type 'exact': 'value' must be a string"),
        ("exact", {"value": "x", "ignorecase": True}, "has no option 'ignorecase'; it takes"),
        ("exact", {"value": "x", "strip": "yes"}, "'strip' must be true or false"),
        ("numeric", {"value": True}, "'value' must be a finite number"),
        ("numeric", {"value": float("nan")}, "'value' must be a finite number"),
        ("numeric", {"value": 1, "tolerance": -1}, "'tolerance' must be a number, 0 or more"),
        ("contains", {"values": []}, "'values' must be a non-empty list of non-empty strings"),
        ("contains", {"values": ["a", ""]}, "'values' must be a non-empty list"),
        ("contains", {"values": "abc"}, "'values' must be a non-empty list"),
        ("json_schema", {"schema": [1]}, "'schema' must be a mapping"),
    ],
)
def test_bad_specs_are_refused_with_a_sentence(
    registry: Registry, kind: str, spec: dict[str, object], message: str
) -> None:
    assert message in refusal(registry, kind, **spec)
