from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from rolegate.errors import Code, PolicyInvalidError, PolicyLoadError
from rolegate.policy import load_default_policy, load_policy, load_policy_text
from tests.conftest import EXAMPLES

MINIMAL: dict[str, Any] = {
    "version": 1,
    "name": "mini",
    "providers": {
        "ollama": {"type": "ollama", "base_url": "http://127.0.0.1:11434", "locality": "local"},
        "cloud": {
            "type": "openai",
            "base_url": "https://api.example.com/v1",
            "api_key_env": "EXAMPLE_KEY",
            "locality": "cloud",
        },
    },
    "models": {
        "small": {
            "provider": "ollama",
            "name": "small:1b",
            "context_window": 8192,
            "reserve_tokens": 1024,
            "capabilities": ["chat", "summarize"],
        },
        "big": {
            "provider": "cloud",
            "name": "big-1",
            "context_window": 128000,
            "reserve_tokens": 8000,
            "price": {"input_per_mtok": "1.0", "output_per_mtok": "4"},
            "capabilities": ["chat", "reasoning"],
        },
    },
    "roles": {"assistant": {"model": "small"}},
}

MINIMAL_TOML = """
version = 1
name = "mini"

[providers.ollama]
type = "ollama"
base_url = "http://127.0.0.1:11434"
locality = "local"

[providers.cloud]
type = "openai"
base_url = "https://api.example.com/v1"
api_key_env = "EXAMPLE_KEY"
locality = "cloud"

[models.big]
provider = "cloud"
name = "big-1"
context_window = 128000
reserve_tokens = 8000
capabilities = ["chat", "reasoning"]
price = { input_per_mtok = 1.00, output_per_mtok = 4.0 }

[models.small]
provider = "ollama"
name = "small:1b"
context_window = 8192
reserve_tokens = 1024
capabilities = ["chat", "summarize"]

[roles.assistant]
model = "small"
"""


def with_changes(changes: dict[str, Any]) -> dict[str, Any]:
    data = json.loads(json.dumps(MINIMAL))
    for dotted, value in changes.items():
        *path, last = dotted.split(".")
        node = data
        for part in path:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return data


def load_dict(data: dict[str, Any]) -> Any:
    return load_policy_text(json.dumps(data), "json", "test.json")


def problems_of(data: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(PolicyInvalidError) as info:
        load_dict(data)
    assert info.value.code == Code.POLICY_INVALID
    return [(p.location, p.message) for p in info.value.problems]


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_policy_loads(path: Path) -> None:
    policy = load_policy(path)
    assert policy.hash.startswith("sha256:")
    assert len(policy.hash) == len("sha256:") + 64


def test_embedded_default_policy_is_local_only_ollama() -> None:
    policy = load_default_policy()
    assert policy.doc.privacy.local_only
    assert {p.type for p in policy.doc.providers.values()} == {"ollama"}
    assert not policy.warnings


def test_hash_ignores_format_key_order_and_number_spelling(tmp_path: Path) -> None:
    yaml_file = tmp_path / "p.yaml"
    yaml_file.write_text(yaml.safe_dump(MINIMAL, sort_keys=False))
    json_file = tmp_path / "p.json"
    reordered = dict(reversed(list(MINIMAL.items())))
    json_file.write_text(json.dumps(reordered, indent=7))
    toml_file = tmp_path / "p.toml"
    toml_file.write_text(MINIMAL_TOML)
    hashes = {load_policy(f).hash for f in (yaml_file, json_file, toml_file)}
    assert len(hashes) == 1


def test_hash_changes_when_a_rule_changes() -> None:
    a = load_dict(MINIMAL).hash
    b = load_dict(with_changes({"models.small.reserve_tokens": 1025})).hash
    assert a != b


def test_unknown_key_is_an_error_naming_its_path() -> None:
    problems = problems_of(with_changes({"models.small.contex_window": 4096}))
    assert problems == [
        (
            "models.small.contex_window",
            "unknown key (not part of the policy format; check the spelling)",
        )
    ]


def test_all_schema_errors_are_listed_at_once() -> None:
    data = with_changes(
        {
            "models.small.reserve_tokens": -1,
            "providers.cloud.locality": "moon",
            "roles.assistant.authority": "boss",
        }
    )
    locations = {loc for loc, _ in problems_of(data)}
    assert locations == {
        "models.small.reserve_tokens",
        "providers.cloud.locality",
        "roles.assistant.authority",
    }


@pytest.mark.parametrize(
    ("changes", "location", "fragment"),
    [
        ({"roles.assistant.model": "nope"}, "roles.assistant.model", "unknown model 'nope'"),
        ({"models.small.provider": "nope"}, "models.small.provider", "unknown provider"),
        ({"models.small.reserve_tokens": 8192}, "models.small.reserve_tokens", "no input room"),
        (
            {"roles.assistant.fallback": {"models": ["big"]}, "privacy": {"local_only": True}},
            "roles.assistant.fallback.models[0]",
            "fallback to cloud model 'big' under local_only",
        ),
        (
            {"roles.assistant.fallback": {"models": ["big", "small"]}},
            "roles.assistant.fallback.models[1]",
            "cycle",
        ),
        (
            {"intents": {"think": {"requires": ["reasoning"], "role": "assistant"}}},
            "intents.think.role",
            "lacks required capabilities ['reasoning']",
        ),
        (
            {"intents": {"see": {"requires": ["vision"]}}},
            "intents.see.requires",
            "no model has all of ['vision']",
        ),
        (
            {"roles.judge": {"model": "small", "authority": "judge"}},
            "roles.judge",
            "local model ('small') can never be the approving judge",
        ),
        (
            {
                "roles.critic": {"model": "small", "authority": "sidecar"},
                "pipeline": {"stages": [{"name": "s", "owner": "critic"}]},
            },
            "pipeline.stages[0].owner",
            "sidecar and cannot own a stage",
        ),
        (
            {"pipeline": {"stages": [{"name": "s", "owner": "assistant", "critic": "assistant"}]}},
            "pipeline.stages[0].critic",
            "must have authority 'sidecar'",
        ),
        (
            {"jobs": {"j": {"role": "assistant", "premium_allowlist": ["ghost"]}}},
            "jobs.j.premium_allowlist[0]",
            "unknown model 'ghost'",
        ),
        (
            {"budgets": [{"scope": "job", "target": "ghost", "window": "day", "usd": "1"}]},
            "budgets[0].target",
            "unknown job 'ghost'",
        ),
        (
            {"intents": {"x": {"match": {"regex": ["(unclosed"]}}}},
            "intents.x.match.regex[0]",
            "invalid regular expression",
        ),
        ({"pipeline": {"consensus": "vote"}}, "pipeline.consensus", "Input should be 'forbidden'"),
        ({"privacy": {"log_prompts": True}}, "privacy.log_prompts", "Input should be False"),
        (
            {"budgets": [{"scope": "global", "window": "rolling", "usd": "1"}]},
            "budgets[0]",
            "window_seconds",
        ),
        ({"jobs": {"j": {}}}, "jobs.j", "needs a 'role' unless it is 'script_only'"),
    ],
)
def test_cross_reference_errors(changes: dict[str, Any], location: str, fragment: str) -> None:
    problems = problems_of(with_changes(changes))
    assert any(loc == location and fragment in msg for loc, msg in problems), problems


def test_premium_role_of_a_job_must_be_on_its_allowlist() -> None:
    data = with_changes(
        {
            "models.big.premium": True,
            "roles.planner": {"model": "big"},
            "jobs": {"daily": {"role": "planner"}},
        }
    )
    assert problems_of(data) == [
        (
            "jobs.daily.premium_allowlist",
            "the job's role 'planner' runs premium model 'big', which the job's allowlist "
            "does not name",
        )
    ]


def test_model_without_context_policy_is_a_warning_not_an_error() -> None:
    policy = load_dict(with_changes({"models.big.context_window": None}))
    assert [(w.location, w.severity) for w in policy.warnings] == [("models.big", "warning")]


def test_load_errors_name_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nname: [unclosed\n")
    with pytest.raises(PolicyLoadError) as info:
        load_policy(bad)
    assert f"{bad}:" in info.value.message
    assert "invalid YAML" in info.value.message
    with pytest.raises(PolicyLoadError, match="no such file"):
        load_policy(tmp_path / "missing.yaml")
    other = tmp_path / "policy.ini"
    other.write_text("x")
    with pytest.raises(PolicyLoadError, match="unknown format"):
        load_policy(other)


def test_top_level_must_be_a_mapping() -> None:
    with pytest.raises(PolicyInvalidError, match="a policy is a mapping"):
        load_policy_text("- 1\n- 2\n", "yaml", "list.yaml")


def test_a_stage_critic_under_critic_never_is_a_warning() -> None:
    stages = [{"name": "s", "owner": "assistant", "critic": "critic"}]
    base = {"roles.critic": {"model": "small", "authority": "sidecar"}}
    quiet = load_dict(with_changes({**base, "pipeline": {"critic": "always", "stages": stages}}))
    assert not quiet.warnings
    policy = load_dict(with_changes({**base, "pipeline": {"critic": "never", "stages": stages}}))
    assert [(w.location, w.message) for w in policy.warnings] == [
        (
            "pipeline.stages[0].critic",
            "pipeline.critic is 'never', so the critic 'critic' never runs",
        )
    ]
