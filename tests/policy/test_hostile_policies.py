"""Hostile policy files: each gets a one-sentence refusal, fast, with bounded memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

import rolegate.policy.loader as policy_loader
from rolegate.cli import main
from rolegate.errors import PolicyInvalidError, PolicyLoadError
from rolegate.policy import Policy, classify, load_policy, load_policy_text
from rolegate.policy.loader import MAX_POLICY_BYTES, MAX_VALUES
from tests.conftest import example_path
from tests.policy.test_loader import MINIMAL, with_changes

T = TypeVar("T")
GUARD_S = 5.0

YAML_LOADERS: dict[str, Callable[[str], Any]] = {"pure-python": policy_loader._PurePolicyLoader}
if yaml.__with_libyaml__:
    YAML_LOADERS["libyaml"] = policy_loader._LOADER


@pytest.fixture(params=sorted(YAML_LOADERS))
def yaml_loader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a YAML test with each event source: libyaml's parser and PyYAML's own."""
    monkeypatch.setattr(policy_loader, "_LOADER", YAML_LOADERS[request.param])
    return str(request.param)


def within(
    fn: Callable[[], T], *, seconds: float = GUARD_S, unblock: Callable[[], None] | None = None
) -> T:
    """Run ``fn`` in a daemon thread; a hang fails the test instead of hanging it."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        if unblock is not None:
            unblock()
        pytest.fail(f"no answer within {seconds}s")
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


# A thread cannot stop Python's own regex engine (it holds the GIL) nor bound the memory
# of a read that never ends, so those cases run in a child process: killed after
# CHILD_GUARD_S seconds, with its address space capped, so a regression fails the test
# instead of hanging it or exhausting the machine.
CHILD_GUARD_S = 30.0
CHILD = """
import json, sys, time
try:
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
except (ImportError, ValueError, OSError):
    pass
from rolegate.errors import RolegateError
from rolegate.policy import RouteRequest, classify, load_policy, load_policy_text, route
arg = json.loads(sys.argv[1])
started = time.monotonic()
try:
    result, error = repr(%s), None
except RolegateError as exc:
    result, error = None, exc.message
print(json.dumps({"seconds": time.monotonic() - started, "result": result, "error": error}))
"""


def in_child(call: str, arg: object) -> dict[str, Any]:
    """Evaluate ``call`` (with ``arg`` bound) in a fresh interpreter; report what happened."""
    try:
        proc = subprocess.run(
            [sys.executable, "-c", CHILD % call, json.dumps(arg)],
            capture_output=True,
            text=True,
            timeout=CHILD_GUARD_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"no answer within {CHILD_GUARD_S}s")
    assert proc.returncode == 0, proc.stderr[-2000:]
    report: dict[str, Any] = json.loads(proc.stdout)
    assert report["seconds"] < 1.0, report
    return report


def refusal(
    fn: Callable[[], object],
    kind: type[Exception] = PolicyLoadError,
    unblock: Callable[[], None] | None = None,
) -> Exception:
    """The error ``fn`` raises (within the guard); fails if it returns."""

    def call() -> Exception:
        try:
            fn()
        except kind as exc:
            return exc
        pytest.fail(f"expected {kind.__name__}")

    return within(call, unblock=unblock)


def load_dict(data: dict[str, Any]) -> Policy:
    return load_policy_text(json.dumps(data), "json", "p.json")


def yaml_of(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=1)  # JSON is YAML; keeps tests independent of a dumper


MINIMAL_YAML = """\
version: 1
name: mini
providers:
  ollama: {type: ollama, base_url: "http://127.0.0.1:11434", locality: local}
  cloud: {type: openai, base_url: "https://api.example.com/v1", locality: cloud}
models:
  small: {provider: ollama, name: "small:1b", context_window: 8192, reserve_tokens: 1024}
  big: {provider: cloud, name: big-1, context_window: 128000, reserve_tokens: 8000}
roles:
  assistant: {model: small}
"""


# --- 1. nesting -----------------------------------------------------------------------

DEEP = 3000


@pytest.mark.parametrize(
    ("fmt", "text"),
    [
        ("yaml", "[" * DEEP + "]" * DEEP),
        ("json", "[" * DEEP + "]" * DEEP),
        ("json", '{"a":' * DEEP + "1" + "}" * DEEP),
        ("toml", "x = " + "[" * DEEP + "]" * DEEP),
        ("toml", "x = " + "{a = " * DEEP + "1" + "}" * DEEP),
        ("toml", "[" + ".".join(["a"] * DEEP) + "]\nx = 1\n"),
    ],
    ids=["yaml", "json-array", "json-object", "toml-array", "toml-inline", "toml-tables"],
)
def test_deep_nesting_is_one_sentence_not_a_traceback(fmt: str, text: str) -> None:
    exc = refusal(lambda: load_policy_text(text, fmt, f"deep.{fmt}"))
    assert isinstance(exc, PolicyLoadError)
    assert "nested too deeply" in exc.message
    assert "\n" not in exc.message
    assert exc.__cause__ is None


def test_check_prints_one_line_for_a_deep_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("[" * DEEP + "]" * DEEP)
    assert within(lambda: main(["check", str(path)])) == 1
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 2, lines
    assert "nested too deeply" in lines[0]
    assert lines[1] == f"{path}: INVALID"
    assert "Traceback" not in captured.err + captured.out


@pytest.mark.parametrize(
    "text",
    ["[" * DEEP + "]" * DEEP, "{a: " * DEEP, "".join(" " * i + "- \n" for i in range(200))],
    ids=["flow", "flow-mapping", "block"],
)
def test_deep_yaml_is_refused_by_either_parser(yaml_loader: str, text: str) -> None:
    exc = refusal(lambda: load_policy_text(text, "yaml", "deep.yaml"))
    assert "nested too deeply (more than 64 levels)" in str(exc)


def test_too_many_values_are_refused_without_reading_them_all(yaml_loader: str) -> None:
    many = "- a\n" * (MAX_POLICY_BYTES // 4)
    assert "too many values" in str(refusal(lambda: load_policy_text(many, "yaml", "m.yaml")))
    flow = "[" + "1," * (MAX_VALUES + 10) + "1]"
    assert "too many values" in str(refusal(lambda: load_policy_text(flow, "json", "m.json")))


def test_billion_laughs_is_refused_before_it_expands(yaml_loader: str) -> None:
    levels = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):
        prev, name = chr(ord("a") + i - 1), chr(ord("a") + i)
        levels.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    exc = refusal(lambda: load_policy_text("\n".join(levels) + "\n", "yaml", "lol.yaml"))
    assert "too many values" in str(exc)


def test_an_alias_inside_its_own_node_is_refused(yaml_loader: str) -> None:
    exc = refusal(lambda: load_policy_text("a: &a [*a]\n", "yaml", "loop.yaml"))
    assert "inside the node it names" in str(exc)


# --- 2. duplicate keys ----------------------------------------------------------------


def test_yaml_duplicate_top_level_key_is_refused_with_its_line(yaml_loader: str) -> None:
    text = MINIMAL_YAML + "privacy: {local_only: true}\nprivacy: {local_only: false}\n"
    assert load_policy_text(MINIMAL_YAML, "yaml", "ok.yaml").name == "mini"
    exc = refusal(lambda: load_policy_text(text, "yaml", "dup.yaml"))
    assert isinstance(exc, PolicyLoadError)
    assert exc.message == (
        "dup.yaml:12:1: invalid YAML: duplicate key 'privacy' (first on line 11)"
    )


def test_yaml_duplicate_key_deep_down_is_refused(yaml_loader: str) -> None:
    text = "version: 1\nname: n\nproviders: {}\nmodels:\n  m:\n    provider: p\n    provider: q\n"
    exc = refusal(lambda: load_policy_text(text, "yaml", "dup.yaml"))
    assert "dup.yaml:7:5: invalid YAML: duplicate key 'provider' (first on line 6)" in str(exc)


def test_yaml_merge_keys_may_still_be_overridden(yaml_loader: str) -> None:
    text = "base: &b {a: 1, c: 2}\nx: {<<: *b, a: 3}\n"
    exc = refusal(lambda: load_policy_text(text, "yaml", "merge.yaml"), PolicyInvalidError)
    assert "duplicate" not in str(exc)  # refused as a policy, not as a file


def test_json_duplicate_key_is_refused() -> None:
    text = json.dumps(MINIMAL)[:-1] + ', "privacy": {"local_only": true}, "privacy": {}}'
    exc = refusal(lambda: load_policy_text(text, "json", "dup.json"))
    assert "duplicate key 'privacy'" in str(exc)


def test_toml_duplicate_key_is_refused() -> None:
    text = 'version = 1\nname = "n"\n[privacy]\nlocal_only = true\n[privacy]\nlocal_only = false\n'
    exc = refusal(lambda: load_policy_text(text, "toml", "dup.toml"))
    assert "invalid TOML" in str(exc)


# --- 3. size --------------------------------------------------------------------------


def test_a_file_over_one_mib_is_refused_naming_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    with path.open("wb") as f:
        f.truncate(50 * 1024 * 1024)  # sparse: 50 MB of NULs, no disk used
    tracemalloc.start()
    try:
        exc = refusal(lambda: load_policy(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "1 MiB" in str(exc)
    assert peak < 8 * 1024 * 1024


def test_a_file_at_exactly_the_limit_is_read(tmp_path: Path) -> None:
    text = json.dumps(MINIMAL)
    path = tmp_path / "edge.json"
    path.write_text(text + " " * (MAX_POLICY_BYTES - len(text)))
    assert path.stat().st_size == MAX_POLICY_BYTES
    assert within(lambda: load_policy(path)).name == "mini"
    path.write_text(text + " " * (MAX_POLICY_BYTES - len(text) + 1))
    assert "1 MiB" in str(refusal(lambda: load_policy(path)))


def test_load_policy_text_applies_the_limit_too() -> None:
    text = json.dumps(MINIMAL) + " " * MAX_POLICY_BYTES
    assert "1 MiB" in str(refusal(lambda: load_policy_text(text, "json", "big.json")))
    wide = "é" * (MAX_POLICY_BYTES // 2 + 1)  # fewer characters than the cap, more bytes
    assert "1 MiB" in str(refusal(lambda: load_policy_text(wide, "yaml", "wide.yaml")))


# --- 4. only regular files ------------------------------------------------------------


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_a_symlink_to_a_device_is_refused(tmp_path: Path, device: str) -> None:
    if not Path(device).exists():
        pytest.skip(f"no {device} here")
    link = tmp_path / "policy.yaml"
    link.symlink_to(device)
    report = in_child("load_policy(arg)", str(link))
    assert report["error"] == (
        f"{link}: not a regular file (a character device); a policy must be a regular file"
    )


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "policy.yaml"
    os.mkfifo(fifo)

    def unblock() -> None:  # let a blocked reader see end-of-file
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    exc = refusal(lambda: load_policy(fifo), unblock=unblock)
    assert "not a regular file (a FIFO)" in str(exc)


def test_a_directory_and_a_missing_file_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "policy.yaml"
    folder.mkdir()
    assert "not a regular file (a directory)" in str(refusal(lambda: load_policy(folder)))
    missing = tmp_path / "missing.yaml"
    assert "no such file" in str(refusal(lambda: load_policy(missing)))


def test_a_symlink_to_a_regular_file_is_fine(tmp_path: Path) -> None:
    target = tmp_path / "real.json"
    target.write_text(json.dumps(MINIMAL))
    link = tmp_path / "link.json"
    link.symlink_to(target)
    assert within(lambda: load_policy(link)).name == "mini"


# --- 5. intent patterns are RE2 -------------------------------------------------------


def with_intent(match: dict[str, Any]) -> dict[str, Any]:
    return with_changes({"intents": {"x": {"match": match, "role": "assistant"}}})


def test_catastrophic_regex_routes_in_linear_time() -> None:
    text = json.dumps(with_intent({"regex": ["(a+)+$"]}))
    policy = "load_policy_text(arg, 'json', 'p.json')"
    task = "'a' * 33 + '!'"
    assert in_child(f"classify({policy}, {task})", text)["result"] == "None"
    report = in_child(f"route(RouteRequest(task={task} * 1000), {policy}).outcome", text)
    assert report["error"] is None
    assert in_child(f"classify({policy}, 'aaaa').name", text)["result"] == "'x'"


@pytest.mark.parametrize("pattern", [r"(?=deploy)\w+", r"(?<!un)safe", r"(a)\1"])
def test_patterns_re2_cannot_run_are_refused_by_check(pattern: str) -> None:
    data = json.dumps(with_intent({"regex": ["fine", pattern]}))
    exc = refusal(lambda: load_policy_text(data, "json", "p.json"), PolicyInvalidError)
    assert isinstance(exc, PolicyInvalidError)
    ((location, message),) = [(p.location, p.message) for p in exc.problems]
    assert location == "intents.x.match.regex[1]"
    assert "RE2 syntax: no backreferences or lookaround" in message
    assert "\n" not in message


def test_keywords_still_match_whole_words(mac_mini: Policy) -> None:
    intent = classify(mac_mini, "summarize the logs")
    assert intent is not None
    assert intent.name == "summarize"
    policy = load_dict(with_intent({"keywords": ["café", "why does", "fix"]}))
    assert classify(policy, "un CAFÉ noir") is not None
    assert classify(policy, "Why does it fail?") is not None
    assert classify(policy, "FIX.") is not None
    for text in ("cafés", "prefix", "fix_it", "whydoes"):
        assert classify(policy, text) is None, text


# --- 6. secrets -----------------------------------------------------------------------

GITHUB = "ghp_16C7e42F292c6912E7710c838347Ae178B4a"
OPENAI = "sk-proj-abc123DEF456ghi789JKL012mno345"
AWS = "AKIAIOSFODNN7EXAMPLE"
SLACK = "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"
LONG_RUN = "QWERTY1234567890ASDFGH"


def refused_with_secret(changes: dict[str, Any], secret: str) -> PolicyInvalidError:
    exc = refusal(lambda: load_dict(with_changes(changes)), PolicyInvalidError)
    assert isinstance(exc, PolicyInvalidError)
    assert secret not in str(exc)
    assert secret not in repr(exc.problems)
    return exc


@pytest.mark.parametrize("secret", [GITHUB, OPENAI, AWS, SLACK, LONG_RUN, GITHUB.upper()])
def test_a_key_in_api_key_env_is_refused_without_echoing_it(secret: str) -> None:
    exc = refused_with_secret({"providers.cloud.api_key_env": secret}, secret)
    assert [(p.location, p.message) for p in exc.problems] == [
        (
            "providers.cloud.api_key_env",
            "looks like an API key, not the name of an environment variable; put the key "
            "in an environment variable and name that variable here",
        )
    ]


def test_api_key_env_must_be_upper_snake_case() -> None:
    exc = refused_with_secret({"providers.cloud.api_key_env": "openai-key"}, "openai-key")
    assert "upper snake case" in exc.problems[0].message
    for name in ("OPENAI_API_KEY", "HF_TOKEN", "HF_INFERENCE_API_TOKEN", "SK_API_KEY", "A" * 64):
        assert load_dict(with_changes({"providers.cloud.api_key_env": name}))
    refused_with_secret({"providers.cloud.api_key_env": "A" * 65}, "A" * 65)


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("https://user:sk-abc@api.example.com/v1", "sk-abc"),
        ("https://sk-abc123def456ghi789@api.example.com/v1", "sk-abc123def456ghi789"),
        ("https://api.example.com/v1?api_key=s3cr3tvalue", "s3cr3tvalue"),
        ("https://api.example.com/v1?key=s3cr3tvalue", "s3cr3tvalue"),
        ("https://api.example.com/v1?token=s3cr3tvalue", "s3cr3tvalue"),
        ("https://api.example.com/v1?access_token=s3cr3tvalue", "s3cr3tvalue"),
        ("https://api.example.com/v1?x=1&Api-Key=s3cr3tvalue", "s3cr3tvalue"),
        (f"https://api.example.com/{OPENAI}/v1", OPENAI),
        (f"https://api.example.com/v1/{AWS}", AWS),
    ],
)
def test_a_key_in_base_url_is_refused_without_echoing_it(url: str, secret: str) -> None:
    exc = refused_with_secret({"providers.cloud.base_url": url}, secret)
    assert {p.location for p in exc.problems} == {"providers.cloud.base_url"}
    assert all("environment variable" in p.message for p in exc.problems)


@pytest.mark.parametrize(
    "url",
    [
        "https://generativelanguage.googleapis.com/v1beta/openai/",
        "https://gateway.ai.cloudflare.com/v1/023e105f4ecef8ad9ca31a8372d0c353/gw/openai",
        "https://res.openai.azure.com/openai/deployments/gpt-4o-mini?api-version=2024-02-01",
        "http://127.0.0.1:8080/v1",
        "https://aiplatform.googleapis.com/v1beta1/projects/p-123/locations/asia-northeast1/x",
    ],
)
def test_ordinary_base_urls_are_fine(url: str) -> None:
    policy = load_dict(with_changes({"providers.cloud.base_url": url}))
    assert policy.doc.providers["cloud"].base_url == url


def test_cli_never_prints_a_secret(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = with_changes(
        {
            "providers.cloud.api_key_env": GITHUB,
            "providers.cloud.base_url": f"https://user:{OPENAI}@api.example.com/v1?token={AWS}",
        }
    )
    path = tmp_path / "leaky.yaml"
    path.write_text(yaml_of(data))
    assert main(["check", str(path)]) == 1
    assert main(["policy", "show", "--policy", str(path)]) == 1
    captured = capsys.readouterr()
    output = captured.out + captured.err
    assert "looks like an API key" in output
    for secret in (GITHUB, OPENAI, AWS, GITHUB.lower(), GITHUB.upper()):
        assert secret not in output
    assert "Traceback" not in output


# --- 7. YAML 1.2 booleans -------------------------------------------------------------


def test_unquoted_on_is_a_key_and_yes_no_are_strings(yaml_loader: str) -> None:
    text = MINIMAL_YAML + (
        "  helper:\n"
        "    model: small\n"
        "    fallback: {models: [big], on: [PROVIDER_ERROR]}\n"
        "    description: yes\n"
        "description: off\n"
        "escalation_on_user_request: FALSE\n"
    )
    policy = within(lambda: load_policy_text(text, "yaml", "on.yaml"))
    assert policy.doc.roles["helper"].fallback.on == ("PROVIDER_ERROR",)
    assert policy.doc.roles["helper"].description == "yes"
    assert policy.doc.description == "off"
    assert policy.doc.escalation_on_user_request is False


# --- 8. what a fallback chain may hold ------------------------------------------------


def test_escalation_only_and_premium_models_are_never_fallbacks() -> None:
    base = {
        "models.big.escalation_only": True,
        "models.prem": {**MINIMAL["models"]["big"], "premium": True},
    }
    chain = {"roles.assistant.fallback": {"models": ["big", "prem"]}}
    exc = refusal(lambda: load_dict(with_changes({**base, **chain})), PolicyInvalidError)
    assert isinstance(exc, PolicyInvalidError)
    assert [(p.location, p.severity, p.message) for p in exc.problems] == [
        (
            "roles.assistant.fallback.models[0]",
            "error",
            "'big' is escalation-only: it is reached only through an escalation ladder, "
            "never as a fallback",
        ),
        (
            "roles.assistant.fallback.models[1]",
            "error",
            "'prem' is premium: premium models are explicit and allowlisted, never a fallback",
        ),
    ]
    when = [{"signal": "confidence", "op": "lt", "value": 0.5}]
    ladder = {"roles.assistant.escalation": {"ladder": ["big", "prem"], "when": when}}
    policy = load_dict(with_changes({**base, **ladder}))
    assert policy.doc.roles["assistant"].escalation.ladder == ("big", "prem")


def test_seed001_fallbacks_follow_the_seed() -> None:
    policy = load_policy(example_path("001"))
    roles = policy.doc.roles
    assert roles["architect"].fallback.models == ()
    assert roles["architect"].escalation.ladder == ("gpt-5.1-high", "deepseek-reasoner")
    assert roles["implementer"].fallback.models == ("claude-sonnet",)
    assert roles["tutor"].fallback.models == ("claude-haiku", "gpt-5.1-low")
    assert roles["auditor"].fallback.models == ("claude-sonnet",)
    assert roles["librarian"].escalation.ladder == ("kimi-k2", "claude-sonnet")
    models = policy.doc.models
    escalation_only = {m for m, spec in models.items() if spec.escalation_only}
    assert escalation_only == {"kimi-k2", "deepseek-chat", "deepseek-reasoner"}
    assert {m for m, spec in models.items() if spec.premium} == {"gpt-5.1-high", "claude-opus"}
