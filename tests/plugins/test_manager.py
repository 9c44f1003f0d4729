from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from rolegate.cli import main
from rolegate.engine.bootstrap import build_engine
from rolegate.errors import Code, PluginError, RolegateError
from rolegate.plugins.base import ProviderType, RoleKind
from rolegate.plugins.builtin.openai_provider import OpenAIProviderType
from rolegate.plugins.hookspecs import hookimpl
from rolegate.plugins.manager import build_registry
from rolegate.policy import load_policy
from tests.conftest import ROOT

ECHO_POLICY = ROOT / "examples" / "plugins" / "rolegate-echo" / "echo-policy.yaml"


def test_builtins_and_the_echo_plugin_are_found_through_entry_points() -> None:
    registry = build_registry()
    assert set(registry.providers) >= {"openai", "ollama", "echo"}
    assert set(registry.roles) >= {"owner", "critic", "judge", "summarizer"}
    echo = next(p for p in registry.plugins if p.name == "echo")
    assert (echo.distribution, echo.version) == ("rolegate-echo", "0.1.0")
    assert echo.provides == [
        "provider:echo",
        "role:summarizer",
        "audit-sink",
        "checker:echo-length",
    ]
    builtin = next(p for p in registry.plugins if p.name == "openai_provider")
    assert builtin.distribution == "rolegate (built-in)"


def test_each_build_is_a_fresh_registry() -> None:
    assert build_registry().providers is not build_registry().providers


def test_blocking_a_plugin_by_name() -> None:
    registry = build_registry(block=["echo"])
    assert "echo" not in registry.providers
    assert registry.blocked == ["echo"]
    with pytest.raises(RolegateError) as info:
        build_engine(load_policy(ECHO_POLICY), block=["echo"], env={})
    assert info.value.code == Code.PROVIDER_UNAVAILABLE
    assert "['echo'] that no loaded plugin provides" in info.value.message


class DuplicateOpenAI:
    @hookimpl
    def register_providers(self, register: Callable[[ProviderType], None]) -> None:
        register(OpenAIProviderType())


def test_duplicate_names_are_refused_naming_both_plugins() -> None:
    with pytest.raises(PluginError) as info:
        build_registry(extra_plugins=[DuplicateOpenAI()])
    message = info.value.message
    assert "provider type 'openai' is registered by both plugin" in message
    assert "'openai_provider'" in message


class DuplicateRole:
    @hookimpl
    def register_roles(self, register: Callable[[RoleKind], None]) -> None:
        register(RoleKind("critic", "another critic"))


def test_duplicate_role_kind_is_refused() -> None:
    with pytest.raises(PluginError, match="role kind 'critic' is registered by both"):
        build_registry(extra_plugins=[DuplicateRole()])


class Misspelled:
    @hookimpl
    def register_provider(self, register: Any) -> None:  # not a rolegate hook
        raise AssertionError("never called")


def test_unknown_hook_fails_check_pending() -> None:
    with pytest.raises(PluginError, match="hook rolegate does not define"):
        build_registry(extra_plugins=[Misspelled()])


def test_plugins_command_lists_distributions(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins"]) == 0
    lines = capsys.readouterr().out.splitlines()
    echo = next(line for line in lines if line.startswith("echo "))
    assert "rolegate-echo 0.1.0" in echo
    assert "provider:echo" in echo
