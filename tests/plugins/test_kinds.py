"""A policy role selects a role kind with ``kind:``; without one, its authority decides."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from rolegate.errors import Code, PluginError, PolicyInvalidError
from rolegate.plugins.base import RoleKind
from rolegate.plugins.builtin.roles import CRITIC_PROMPT, JUDGE_PROMPT
from rolegate.plugins.hookspecs import hookimpl
from rolegate.plugins.kinds import default_prompts, kind_name, resolve_role_kinds
from rolegate.plugins.manager import build_registry
from rolegate.policy import load_policy
from rolegate.policy.schema import Role
from tests.conftest import EXAMPLES, ROOT

REVIEWER_PROMPT = "Review the diff; list problems only."


class ReviewerPlugin:
    @hookimpl
    def register_roles(self, register: Callable[[RoleKind], None]) -> None:
        register(RoleKind("reviewer", "Reviews diffs.", REVIEWER_PROMPT, "sidecar"))


@pytest.fixture(scope="module")
def kinds() -> dict[str, RoleKind]:
    return build_registry(extra_plugins=[ReviewerPlugin()], load_entry_points=False).roles


def test_default_kinds_follow_authority(kinds: dict[str, RoleKind]) -> None:
    roles = {
        "writer": Role(model="m"),
        "critic": Role(model="m", authority="sidecar"),
        "judge": Role(model="m", authority="judge"),
    }
    resolved = resolve_role_kinds(roles, kinds)
    assert {role: kind.name for role, kind in resolved.items()} == {
        "writer": "owner",
        "critic": "critic",
        "judge": "judge",
    }
    assert default_prompts(resolved) == {"critic": CRITIC_PROMPT, "judge": JUDGE_PROMPT}


def test_a_role_naming_a_kind_gets_that_kinds_prompt(kinds: dict[str, RoleKind]) -> None:
    roles = {"review": Role(model="m", authority="sidecar", kind="reviewer")}
    assert kind_name(roles["review"]) == "reviewer"
    resolved = resolve_role_kinds(roles, kinds)
    assert resolved["review"].name == "reviewer"
    assert default_prompts(resolved) == {"review": REVIEWER_PROMPT}


def test_an_unknown_kind_is_refused_naming_role_kind_and_the_loaded_kinds(
    kinds: dict[str, RoleKind],
) -> None:
    roles = {"review": Role(model="m", authority="sidecar", kind="reviewr")}
    with pytest.raises(PluginError) as info:
        resolve_role_kinds(roles, kinds)
    assert info.value.code == Code.PLUGIN_ERROR
    message = info.value.message
    assert "role 'review' asks for kind 'reviewr', which no loaded plugin provides" in message
    assert "(loaded kinds: ['critic', 'judge', 'owner', 'reviewer'])" in message


def test_kind_and_authority_must_agree(kinds: dict[str, RoleKind]) -> None:
    roles = {
        "boss": Role(model="m", kind="reviewer"),  # owner authority, sidecar kind
        "fine": Role(model="m", kind="owner"),
        "judge": Role(model="m", authority="judge", kind="critic"),
    }
    with pytest.raises(PluginError) as info:
        resolve_role_kinds(roles, kinds)
    message = info.value.message
    assert "role 'boss' has authority 'owner' but its kind 'reviewer' is for 'sidecar'" in message
    assert "role 'judge' has authority 'judge' but its kind 'critic' is for 'sidecar'" in message
    assert "'fine'" not in message  # every problem at once, and only the problems


def test_a_missing_default_kind_is_refused_with_a_hint() -> None:
    kinds = build_registry(block=["roles"], load_entry_points=False).roles
    with pytest.raises(PluginError) as info:
        resolve_role_kinds({"critic": Role(model="m", authority="sidecar")}, kinds)
    message = info.value.message
    assert "role 'critic' has no 'kind', so its authority 'sidecar' gives it kind 'critic'" in (
        message
    )
    assert "unblock the built-in 'roles' plugin" in message


def test_kind_is_validated_like_other_names(tmp_path: Path) -> None:
    source = (ROOT / "examples" / "plugins" / "rolegate-echo" / "echo-policy.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(source.replace("kind: summarizer", "kind: 'has spaces'"))
    with pytest.raises(PolicyInvalidError) as info:
        load_policy(bad)
    assert any(p.location == "roles.parrot.kind" for p in info.value.problems)


# Hashes printed by `rolegate check` (re-pinned when the policies gained intent examples,
# and when their examples grew into kinds and their keywords were cut to precise ones; 004
# when it declared its servers and residency):
# an optional field that is absent must not change the hash of any policy written before it
# existed (tests/policy/test_intents.py checks the fields added since).
HASHES_BEFORE_KIND = {
    "000-mac-mini-lanes.yaml": "da7ec3d3daf362215c765743183bc84d4a2073efaa828d7585e4130ce00e58c6",
    "001-codex-rs-roles.yaml": "67b4c1a9d8baaf740b2c1791f0c87e10977dc356dcfb81d8f6703a8ba54d85ce",
    # 002 changed on purpose: its reasoning role gained candidates and a quality rule.
    "002-three-role-stack.yaml": "cbbee3411a6dcb7cea3d70ef608c3e70ce26024900ad773e542b8a1637067fed",
    "003-sophie-context.yaml": "d5a1123d5a8cb397f2f5026221466f54e8d3c8fc58b73ab831882254096a9201",
    "004-orchestrator-tiers.yaml": (
        "faa4b14f8ec4123b4129072529876d4408671cce5eb2ffc2ce6e7e40316a371f"
    ),
}
DEFAULT_POLICY_HASH = "1fcc07c0c035257cb577a2daaa5231582b2b27a990873c21baf275135a536d40"


@pytest.mark.parametrize("name", sorted(HASHES_BEFORE_KIND))
def test_example_policy_hashes_did_not_change(name: str) -> None:
    assert load_policy(EXAMPLES / name).hash == "sha256:" + HASHES_BEFORE_KIND[name]


def test_default_policy_hash_did_not_change() -> None:
    policy = load_policy(ROOT / "src" / "rolegate" / "policy" / "default_policy.yaml")
    assert policy.hash == "sha256:" + DEFAULT_POLICY_HASH


def test_a_kind_that_is_set_is_part_of_the_hash(tmp_path: Path) -> None:
    echo = ROOT / "examples" / "plugins" / "rolegate-echo" / "echo-policy.yaml"
    without = tmp_path / "without.yaml"
    without.write_text(echo.read_text().replace("kind: summarizer", ""))
    assert load_policy(echo).hash != load_policy(without).hash
    assert '"kind":"summarizer"' in load_policy(echo).canonical_json
    assert "kind" not in load_policy(without).doc.roles["parrot"].model_dump(mode="json")
