"""The llama-server binary is looked for when a server starts, not when the policy is read:
a machine without it can still route to, probe and report servers that run elsewhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from rolegate.errors import Code, ProviderError
from rolegate.policy import load_policy
from rolegate.topology.servers import server_specs
from tests.conftest import example_path


def test_specs_need_no_binary_and_starting_names_what_is_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no llama-server on it
    policy = load_policy(example_path("004"))
    specs = server_specs(policy, env={})
    assert specs  # every declared server, resolved without a binary
    spec = next(iter(specs.values()))
    with pytest.raises(ProviderError) as caught:
        spec.argv()
    assert caught.value.code == Code.LOAD_FAILED
    assert "ROLEGATE_LLAMA_SERVER" in caught.value.message
    found = server_specs(policy, env={"ROLEGATE_LLAMA_SERVER": "/opt/llama/llama-server"})
    argv = found[spec.model].argv()
    assert argv[0] == "/opt/llama/llama-server"
    assert argv[1:3] == ("-m", str(spec.gguf))
