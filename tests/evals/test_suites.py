"""Eval suite files: the format, the loader's errors, the hash, and the example suites."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from rolegate.errors import Code, RequestError
from rolegate.evals import suites
from rolegate.evals.suites import Suite, load_suite, validate_suite
from rolegate.plugins.base import CheckContext
from rolegate.plugins.manager import Registry, build_registry
from rolegate.policy.loader import Limits
from rolegate.policy.schema import Contract
from tests.conftest import ROOT

EXAMPLES = ROOT / "examples" / "evals"
# The contract extraction.yaml's header tells a policy author to paste.
INVOICE = Contract(
    required=("vendor", "total", "currency"),
    types={"vendor": "string", "total": "number", "currency": "string"},
)

SMALL = """\
name: small
description: two cases
system: Be brief.
max_output_tokens: 32
cases:
  - id: add
    prompt: "What is 2 + 2?"
    check: {type: numeric, value: 4}
  - id: chat
    messages:
      - {role: user, content: Hi}
      - {role: assistant, content: Hello}
      - {role: user, content: Say yes}
    system: Reply with one word.
    max_output_tokens: 4
    check: {type: exact, value: "yes", ignore_case: true}
"""


@pytest.fixture(scope="module")
def registry() -> Registry:
    return build_registry(load_entry_points=False)


def write(tmp_path: Path, text: str, name: str = "suite.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def refusal(tmp_path: Path, text: str, name: str = "suite.yaml") -> str:
    path = write(tmp_path, text, name)
    with pytest.raises(RequestError) as info:
        load_suite(path)
    assert info.value.code == Code.INVALID_ARGUMENT
    assert str(path) in info.value.message
    return info.value.message


def test_a_suite_and_its_cases(tmp_path: Path) -> None:
    path = write(tmp_path, SMALL)
    suite = load_suite(str(path))
    assert (suite.name, suite.description, suite.source) == ("small", "two cases", str(path))
    assert (suite.system, suite.max_output_tokens) == ("Be brief.", 32)
    add, chat = suite.cases
    assert (add.id, add.check_type, add.check_spec()) == ("add", "numeric", {"value": 4})
    assert add.chat() == ("What is 2 + 2?", None)
    assert (chat.system, chat.max_output_tokens) == ("Reply with one word.", 4)
    prompt, messages = chat.chat()
    assert prompt is None
    assert messages is not None
    assert messages[-1] == {"role": "user", "content": "Say yes"}
    assert suite.hash.startswith("sha256:")
    assert len(suite.hash) == len("sha256:") + 16


def test_the_hash_ignores_formatting_key_order_and_format(tmp_path: Path) -> None:
    original = load_suite(write(tmp_path, SMALL))
    data = yaml.safe_load(SMALL)
    reordered = {k: data[k] for k in reversed(list(data))}
    reordered["cases"] = [{k: c[k] for k in sorted(c)} for c in data["cases"]]
    as_json = load_suite(write(tmp_path, json.dumps(reordered, indent=4), "suite.json"))
    flowed = "# a comment\n" + yaml.safe_dump(data, default_flow_style=True)
    flow = load_suite(write(tmp_path, flowed, "flow.yaml"))
    assert original.hash == as_json.hash == flow.hash


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("value: 4}", "value: 5}"),
        ('"What is 2 + 2?"', '"What is 2 + 3?"'),
        ("id: add", "id: plus"),
        ("max_output_tokens: 4\n", "max_output_tokens: 5\n"),
    ],
)
def test_any_changed_value_changes_the_hash(tmp_path: Path, old: str, new: str) -> None:
    assert old in SMALL
    original = load_suite(write(tmp_path, SMALL))
    changed = load_suite(write(tmp_path, SMALL.replace(old, new), "changed.yaml"))
    assert original.hash != changed.hash


def test_a_missing_or_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(RequestError) as info:
        load_suite(tmp_path / "nope.yaml")
    assert info.value.code == Code.INVALID_ARGUMENT
    assert info.value.message == f"{tmp_path / 'nope.yaml'}: no such file"
    folder = tmp_path / "folder.yaml"
    folder.mkdir()
    with pytest.raises(RequestError) as info:
        load_suite(folder)
    assert info.value.message == (
        f"{folder}: not a regular file (a directory); a suite must be a regular file"
    )
    if hasattr(os, "mkfifo"):  # a FIFO never blocks the loader
        os.mkfifo(tmp_path / "fifo.yaml")
        with pytest.raises(RequestError, match=r"not a regular file \(a FIFO\)"):
            load_suite(tmp_path / "fifo.yaml")


def test_a_file_over_the_cap_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    with path.open("wb") as f:
        f.truncate(suites.MAX_SUITE_BYTES + 1)  # sparse: no disk used
    with pytest.raises(RequestError) as info:
        load_suite(path)
    assert info.value.code == Code.INVALID_ARGUMENT
    assert info.value.message == (
        f"{path}: too large: a suite file may be at most 16 MiB (16777216 bytes)"
    )


@pytest.mark.parametrize(
    ("text", "name", "message"),
    [
        ("name: x\ncases: [\n", "suite.yaml", "suite.yaml:3:1: invalid YAML:"),
        ('{"name": "x",}', "suite.json", "suite.json:1:14: invalid JSON:"),
        ('{"name": "x", "name": "y"}', "suite.json", "invalid JSON: duplicate key 'name'"),
        (
            "name: x\nname: y\n",
            "suite.yaml",
            "suite.yaml:2:1: invalid YAML: duplicate key 'name' (first on line 1)",
        ),
        ("name: x\n", "suite.txt", "unknown suite format '.txt'; use .yaml, .yml or .json"),
        ("name = 'x'\n", "suite.toml", "unknown suite format '.toml'; use .yaml, .yml or .json"),
        ("name: x\n", "suite", "unknown suite format '(no suffix)'"),
        ("- 1\n- 2\n", "suite.yaml", "(top level): a suite is a mapping with 'name' and 'cases'"),
        ("a: &a [*a]\n", "suite.yaml", "invalid YAML: alias *a is inside the node it names"),
        ("a: " + "[" * 70 + "]" * 70, "suite.yaml", "nested too deeply (more than 64 levels)"),
        ('{"a": ' + "[" * 70 + "]" * 70 + "}", "suite.json", "nested too deeply (more than 64"),
    ],
)
def test_unparsable_files(tmp_path: Path, text: str, name: str, message: str) -> None:
    assert message in refusal(tmp_path, text, name)


def test_aliases_are_expanded_within_the_value_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    second = '{type: exact, value: "yes", ignore_case: true}'
    shared = SMALL.replace("{type: numeric", "&four {type: numeric").replace(second, "*four")
    flat = SMALL.replace(second, "{type: numeric, value: 4}")
    expanded = load_suite(write(tmp_path, shared))
    assert expanded.cases[1].check == {"type": "numeric", "value": 4}
    assert expanded.hash == load_suite(write(tmp_path, flat, "flat.yaml")).hash
    levels = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):
        prev, name = chr(ord("a") + i - 1), chr(ord("a") + i)
        levels.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    message = refusal(tmp_path, "\n".join(levels) + "\n", "lol.yaml")
    assert "invalid YAML: too many values (more than 1,000,000, aliases expanded)" in message
    monkeypatch.setattr(suites, "SUITE_LIMITS", Limits("suite", suites.MAX_SUITE_BYTES, 20))
    assert "too many values (more than 20, aliases expanded)" in refusal(tmp_path, SMALL)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "suite.yaml"
    path.write_bytes(b"name: \xff\n")
    with pytest.raises(RequestError, match=r"not UTF-8 text \(bad byte at offset 6\)"):
        load_suite(path)


CASE = "  - id: a\n    prompt: hi\n    check: {type: exact, value: x}\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: s\ncases: []\n", "cases: is empty; add at least one case"),
        ("cases: []\n", "cases: is empty"),
        ("name: s\n", "cases: required; add it"),
        ("name: -bad\ncases:\n" + CASE, "name: must be a name"),
        ("name: s\ncolour: red\ncases:\n" + CASE, "colour: unknown key (not part of the suite"),
        ("name: s\ncases:\n" + CASE + CASE, "cases[1].id: duplicate id 'a' (first at cases[0])"),
        (
            "name: s\ncases:\n  - id: a\n    check: {type: exact, value: x}\n",
            "cases[0]: give exactly one of 'prompt' and 'messages'",
        ),
        (
            "name: s\ncases:\n" + CASE + "    messages: [{role: user, content: hi}]\n",
            "cases[0]: give exactly one of 'prompt' and 'messages'",
        ),
        (
            "name: s\ncases:\n  - id: a\n    messages: [{role: robot, content: hi}]\n"
            "    check: {type: exact, value: x}\n",
            "cases[0].messages[0].role: Input should be 'system', 'user' or 'assistant'",
        ),
        ("name: s\ncases:\n  - id: a\n    prompt: hi\n    check: {value: x}\n", "cases[0].check:"),
        (
            "name: s\ncases:\n  - {id: a, messages: [], check: {type: exact, value: x}}\n",
            "cases[0].messages: is empty; give at least one message, or use 'prompt'",
        ),
        (
            "name: s\ncases:\n  - {id: a, messages: [{role: user, content: hi, name: n}], "
            "check: {type: exact, value: x}}\n",
            "cases[0].messages[0].name: unknown key",
        ),
        ("name: s\ncases:\n" + CASE + "    max_output_tokens: 0\n", "cases[0].max_output_tokens"),
        # Past the engine's cap: refused when the suite loads, not by every case's call.
        (
            "name: s\nmax_output_tokens: 1000000000000\ncases:\n" + CASE,
            "max_output_tokens: Input should be less than or equal to 100000000",
        ),
        (
            "name: s\ncases:\n" + CASE + "    max_output_tokens: 100000001\n",
            "cases[0].max_output_tokens: Input should be less than or equal to 100000000",
        ),
    ],
)
def test_invalid_suites_say_where_and_what(tmp_path: Path, text: str, message: str) -> None:
    assert message in refusal(tmp_path, text)


def test_every_shape_problem_is_listed_at_once(tmp_path: Path) -> None:
    text = "name: s\ncolour: red\ncases:\n  - id: a\n    check: {type: exact, value: x}\n"
    message = refusal(tmp_path, text)
    assert "has 2 problems:" in message
    assert len(message.splitlines()) == 3


def test_too_many_cases_is_refused_before_validation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(suites, "MAX_CASES", 2)
    message = refusal(tmp_path, "name: s\ncases:\n" + CASE * 3)
    assert "cases: 3 cases; a suite holds at most 2" in message


def test_yes_and_no_stay_strings(tmp_path: Path) -> None:
    text = "name: s\ncases:\n  - id: a\n    prompt: hi\n    check: {type: exact, value: no}\n"
    assert load_suite(write(tmp_path, text)).cases[0].check_spec() == {"value": "no"}


def test_validate_lists_every_check_problem(tmp_path: Path, registry: Registry) -> None:
    text = """\
name: s
cases:
  - {id: a, prompt: hi, check: {type: exactly, value: x}}
  - {id: b, prompt: hi, check: {type: regex, pattern: "("}}
  - {id: c, prompt: hi, check: {type: contract, contract: receipt}}
  - {id: d, prompt: hi, check: {type: numeric, value: 3}}
"""
    suite = load_suite(write(tmp_path, text))
    with pytest.raises(RequestError) as info:
        validate_suite(suite, registry.checkers, {"invoice": INVOICE})
    assert info.value.code == Code.INVALID_ARGUMENT
    lines = info.value.message.splitlines()
    assert lines[0] == f"{suite.source} has 3 problems:"
    assert "cases[0].check.type: case 'a' uses checker 'exactly', which no loaded" in lines[1]
    assert "loaded checkers: ['contains', 'contract', 'exact', 'json_schema'" in lines[1]
    assert "cases[1].check: case 'b': check type 'regex': 'pattern' is not a valid" in lines[2]
    assert "cases[2].check: case 'c': check type 'contract' names contract 'receipt'" in lines[3]


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_the_example_suites_load_and_validate(path: Path, registry: Registry) -> None:
    suite = load_suite(path)
    # Small enough to run on a laptop; the intent suite has 4 tasks per intent.
    assert 3 <= len(suite.cases) <= (44 if path.name == "intents.yaml" else 20)
    validate_suite(suite, registry.checkers, {"invoice": INVOICE})


def test_the_extraction_suite_needs_its_contract(registry: Registry) -> None:
    suite = load_suite(EXAMPLES / "extraction.yaml")
    with pytest.raises(RequestError, match="names contract 'invoice', which the policy"):
        validate_suite(suite, registry.checkers, {})


async def judge(registry: Registry, suite: Suite, answers: dict[str, str]) -> dict[str, bool]:
    contracts = {"invoice": INVOICE}
    out = {}
    for case in suite.cases:
        if case.id in answers:
            checker = registry.checkers[case.check_type]
            context = CheckContext(case.id, "model", contracts)
            out[case.id] = (
                await checker.check(answers[case.id], case.check_spec(), context)
            ).passed
    return out


async def test_the_tiny_suite_has_known_outcomes(registry: Registry) -> None:
    suite = load_suite(EXAMPLES / "tiny.yaml")
    assert [c.id for c in suite.cases] == ["anything", "never", "forty-two"]
    # What the example echo provider answers: the prompt itself.
    echoed = {c.id: c.prompt or "" for c in suite.cases}
    assert await judge(registry, suite, echoed) == {
        "anything": True,
        "never": False,
        "forty-two": True,
    }
    assert await judge(registry, suite, {"anything": "", "never": "hello"}) == {
        "anything": True,
        "never": False,
    }


async def test_good_answers_pass_the_example_suites(registry: Registry) -> None:
    math = load_suite(EXAMPLES / "math.yaml")
    answers = {
        "add-two": "42",
        "divide-decimal": "3.14",
        "compound-interest": "$1,157.63",
        "large-product": "123,456,000",
        "subtract-negative": "The answer is -7.",
    }
    assert all((await judge(registry, math, answers)).values())
    code = load_suite(EXAMPLES / "code.yaml")
    answers = {
        "py-add": "```python\ndef add(a, b):\n    return a + b\n```",
        "rust-add": "fn add(a: i32, b: i32) -> i32 {\n    a + b\n}",
        "sql-count": "SELECT COUNT(*) FROM users;",
        "shell-list-hidden": "ls -la\n",
        "regex-digits": "\\d+",
    }
    assert all((await judge(registry, code, answers)).values())
    extraction = load_suite(EXAMPLES / "extraction.yaml")
    good = '{"vendor": "Northwind Traders Ltd", "total": 55.00, "currency": "USD"}'
    passed = await judge(registry, extraction, {"plain-invoice": good, "plain-invoice-total": good})
    assert passed == {"plain-invoice": True, "plain-invoice-total": True}
