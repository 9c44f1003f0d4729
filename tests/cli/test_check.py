"""`rolegate check` as a user runs it: warnings about provider types plugins may provide."""

from __future__ import annotations

from pathlib import Path

from tests.cli.conftest import Run

POLICY = """
version: 1
name: check-test
providers:
  parrot: {type: echo, base_url: "echo://", locality: local}
  mystery: {type: %s, base_url: "http://127.0.0.1:9/v1", locality: local}
models:
  m: {provider: parrot, name: m, context_window: 4096, reserve_tokens: 512}
roles:
  r: {model: m}
defaults: {role: r}
"""


def test_a_type_an_installed_plugin_provides_is_not_warned_about(
    rolegate: Run, tmp_path: Path
) -> None:
    # The echo example plugin is installed in the test environment (scripts/test.sh).
    assert "echo" in rolegate("plugins").stdout
    policy = tmp_path / "p.yaml"
    policy.write_text(POLICY % "nosuch-type")
    done = rolegate("check", str(policy))
    assert done.returncode == 0, done.stderr
    assert "providers.mystery.type: warning: 'nosuch-type' is not built in" in done.stderr
    assert "providers.parrot.type" not in done.stderr
    assert rolegate("check", "--strict", str(policy)).returncode != 0
    policy.write_text(POLICY % "openai")
    done = rolegate("check", "--strict", str(policy))
    assert (done.returncode, done.stderr) == (0, "")
    assert ": OK check-test revision" in done.stdout
