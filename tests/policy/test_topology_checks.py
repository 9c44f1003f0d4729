"""The declared topology's pure checks, through the policy loader: one server per loopback
port on an OpenAI-type provider, memory declared wherever residency is tracked, the HOT set
within memory and each WARM model able to load next to it, and the new sections left out of
the canonical JSON (so the hash) of a policy that does not use them."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from rolegate.errors import Code, PolicyInvalidError
from rolegate.policy import Policy, load_policy

PORT_A, PORT_B, PORT_C = 18101, 18102, 18103
COMMON: dict[str, Any] = {"context_window": 4096, "reserve_tokens": 512}

BASE: dict[str, Any] = {
    "version": 1,
    "name": "topology-checks",
    "providers": {
        "a-srv": {
            "type": "openai",
            "base_url": f"http://127.0.0.1:{PORT_A}/v1",
            "locality": "local",
        },
        "b-srv": {
            "type": "openai",
            "base_url": f"http://127.0.0.1:{PORT_B}/v1",
            "locality": "local",
        },
        "c-srv": {
            "type": "openai",
            "base_url": f"http://127.0.0.1:{PORT_C}/v1",
            "locality": "local",
        },
        "ollama": {"type": "ollama", "base_url": "http://127.0.0.1:11434", "locality": "local"},
        "cloud": {
            "type": "openai",
            "base_url": "https://api.example.com/v1",
            "api_key_env": "EXAMPLE_KEY",
            "locality": "cloud",
        },
    },
    "models": {
        "alpha": {
            "provider": "a-srv",
            "name": "alpha",
            "tier": "hot",
            "memory_gb": 1,
            "server": {"gguf": "alpha.gguf"},
            **COMMON,
        },
        "bravo": {
            "provider": "b-srv",
            "name": "bravo",
            "tier": "warm",
            "memory_gb": 1,
            "server": {"gguf": "bravo.gguf"},
            **COMMON,
        },
        "big": {
            "provider": "cloud",
            "name": "big-1",
            "price": {"input_per_mtok": "1.0", "output_per_mtok": "4"},
            **COMMON,
        },
    },
    "roles": {"assistant": {"model": "alpha"}},
    "residency": {"memory_gb": 4},
}

PLAIN: dict[str, Any] = {
    "version": 1,
    "name": "plain",
    "providers": {
        "ollama": {"type": "ollama", "base_url": "http://127.0.0.1:11434", "locality": "local"},
    },
    "models": {"small": {"provider": "ollama", "name": "small:1b", **COMMON}},
    "roles": {"assistant": {"model": "small"}},
}


def policy_data(changes: dict[str, Any] | None = None, base: dict[str, Any] = BASE) -> Any:
    """BASE with dotted keys set (a value of None removes the key)."""
    data = copy.deepcopy(base)
    for dotted, value in (changes or {}).items():
        *path, last = dotted.split(".")
        node = data
        for part in path:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return data


def load(tmp_path: Path, data: dict[str, Any]) -> Policy:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_policy(path)


def problems(tmp_path: Path, data: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(PolicyInvalidError) as info:
        load(tmp_path, data)
    assert info.value.code == Code.POLICY_INVALID
    assert all(p.severity == "error" for p in info.value.problems)
    return [(p.location, p.message) for p in info.value.problems]


def test_the_base_topology_is_valid_without_warnings_about_it(tmp_path: Path) -> None:
    policy = load(tmp_path, BASE)
    assert policy.doc.models["alpha"].server is not None
    assert policy.doc.residency is not None
    assert [w for w in policy.warnings if w.location.startswith(("residency", "models."))] == []


def test_two_servers_on_one_port_name_the_port_and_the_other_model(tmp_path: Path) -> None:
    data = policy_data({"models.bravo.provider": "a-srv"})
    assert problems(tmp_path, data) == [
        (
            "models.bravo.server",
            f"port {PORT_A} is already alpha's server; each server needs its own provider and port",
        )
    ]


def test_the_same_port_under_another_loopback_name_is_still_taken(tmp_path: Path) -> None:
    data = policy_data({"providers.b-srv.base_url": f"http://localhost:{PORT_A}/v1"})
    found = problems(tmp_path, data)
    assert [loc for loc, _ in found] == ["models.bravo.server"]
    assert f"port {PORT_A}" in found[0][1]
    assert "alpha" in found[0][1]


def test_a_server_on_an_ollama_provider_is_an_error(tmp_path: Path) -> None:
    data = policy_data({"models.bravo.provider": "ollama"})
    found = problems(tmp_path, data)
    assert [loc for loc, _ in found] == ["models.bravo.server"]
    assert "'ollama'" in found[0][1]
    assert "must have type 'openai'" in found[0][1]


@pytest.mark.parametrize(
    "base_url",
    [
        "http://127.0.0.1/v1",  # no port
        "http://10.0.0.5:8080/v1",  # not loopback
        "http://models.example.com:8080/v1",  # not loopback
        "https://127.0.0.1:8443/v1",  # not plain http
        "http://127.0.0.1:notaport/v1",  # not a port
    ],
)
def test_a_server_needs_a_loopback_base_url_with_a_port(tmp_path: Path, base_url: str) -> None:
    data = policy_data({"providers.b-srv.base_url": base_url})
    found = problems(tmp_path, data)
    assert [loc for loc, _ in found] == ["models.bravo.server"]
    assert "'b-srv'" in found[0][1]
    assert "loopback, explicit port" in found[0][1]


def test_an_ipv6_loopback_base_url_is_accepted(tmp_path: Path) -> None:
    policy = load(tmp_path, policy_data({"providers.b-srv.base_url": f"http://[::1]:{PORT_B}/v1"}))
    assert policy.doc.models["bravo"].server is not None


def test_a_tracked_model_without_memory_gb_is_an_error_under_residency(tmp_path: Path) -> None:
    data = policy_data({"models.bravo.memory_gb": None})
    found = problems(tmp_path, data)
    assert [loc for loc, _ in found] == ["models.bravo.memory_gb"]
    assert "'memory_gb'" in found[0][1]


def test_an_ollama_model_is_tracked_under_residency_and_needs_memory_gb(tmp_path: Path) -> None:
    local = {"provider": "ollama", "name": "local:1b", "tier": "warm", **COMMON}
    assert [loc for loc, _ in problems(tmp_path, policy_data({"models.local": local}))] == [
        "models.local.memory_gb"
    ]
    # Without a residency section nothing is accounted, so nothing is required.
    data = policy_data({"models.local": local, "models.alpha.server": None, "residency": None})
    data["models"]["bravo"].pop("server")
    assert load(tmp_path, data).doc.models["local"].memory_gb is None


def test_a_cloud_model_is_not_tracked_and_needs_no_memory_gb(tmp_path: Path) -> None:
    policy = load(tmp_path, BASE)
    assert policy.doc.models["big"].memory_gb is None
    assert "big" not in policy.managed


def test_a_hot_set_over_the_declared_memory_lists_the_hot_models(tmp_path: Path) -> None:
    charlie = {
        "provider": "c-srv",
        "name": "charlie",
        "tier": "hot",
        "memory_gb": 2.5,
        "server": {"gguf": "c.gguf"},
        **COMMON,
    }
    data = policy_data({"models.charlie": charlie, "models.alpha.memory_gb": 2})
    found = problems(tmp_path, data)
    hot = [msg for loc, msg in found if loc == "residency.memory_gb"]
    assert hot == ["the HOT models (alpha, charlie) take 4.5 GB, more than the 4 GB declared"]
    assert "bravo" not in hot[0]


def test_a_hot_set_exactly_at_the_declared_memory_is_valid(tmp_path: Path) -> None:
    data = policy_data({"models.alpha.memory_gb": 3, "models.bravo.memory_gb": 1})
    assert load(tmp_path, data).doc.residency is not None


def test_a_warm_model_that_cannot_load_next_to_the_hot_set_is_an_error(tmp_path: Path) -> None:
    data = policy_data({"models.alpha.memory_gb": 3, "models.bravo.memory_gb": 1.5})
    assert problems(tmp_path, data) == [
        (
            "models.bravo.memory_gb",
            "bravo (1.5 GB) cannot be loaded next to the HOT models (3 GB) within 4 GB",
        )
    ]


def test_a_warm_model_without_memory_gb_next_to_too_big_a_hot_set_is_reported_not_crashed(
    tmp_path: Path,
) -> None:
    # Regression: the fit check formatted the missing memory_gb (None) with ':g' -> TypeError.
    data = policy_data({"models.alpha.memory_gb": 5, "models.bravo.memory_gb": None})
    found = problems(tmp_path, data)
    assert sorted(loc for loc, _ in found) == ["models.bravo.memory_gb", "residency.memory_gb"]


def test_servers_without_residency_are_a_warning_not_an_error(tmp_path: Path) -> None:
    policy = load(tmp_path, policy_data({"residency": None}))
    warned = [(w.location, w.severity, w.message) for w in policy.warnings]
    mine = [w for w in warned if w[0] == "residency"]
    assert len(mine) == 1
    assert mine[0][1] == "warning"
    assert "no 'residency'" in mine[0][2]
    assert "rolegate up" in mine[0][2]


def test_no_servers_no_residency_warning(tmp_path: Path) -> None:
    policy = load(tmp_path, PLAIN)
    assert [w for w in policy.warnings if w.location == "residency"] == []


@pytest.mark.parametrize(
    "server",
    [
        {"gguf": "alpha.gguf", "speculative": False, "draft": {"gguf": "draft.gguf"}},
        {"gguf": "alpha.gguf", "speculative": False, "lookup": True},
    ],
    ids=["draft", "lookup"],
)
def test_speculative_false_forbids_a_draft_and_lookup(
    tmp_path: Path, server: dict[str, Any]
) -> None:
    found = problems(tmp_path, policy_data({"models.alpha.server": server}))
    assert found == [("models.alpha.server", "'speculative: false' forbids a 'draft' and 'lookup'")]


def test_speculative_false_alone_and_a_draft_alone_are_valid(tmp_path: Path) -> None:
    plain = {"gguf": "alpha.gguf", "speculative": False}
    drafted = {"gguf": "bravo.gguf", "draft": {"gguf": "d.gguf", "max": 8}, "lookup": True}
    policy = load(
        tmp_path, policy_data({"models.alpha.server": plain, "models.bravo.server": drafted})
    )
    server = policy.doc.models["bravo"].server
    assert server is not None
    assert server.draft is not None
    assert server.draft.max == 8


def test_unknown_server_and_residency_keys_are_errors(tmp_path: Path) -> None:
    data = policy_data({"models.alpha.server.gguff": "x", "residency.memory": 4})
    locations = {loc for loc, _ in problems(tmp_path, data)}
    assert locations == {"models.alpha.server.gguff", "residency.memory"}


def test_unset_server_and_residency_are_absent_from_the_canonical_json(tmp_path: Path) -> None:
    plain = json.loads(load(tmp_path, PLAIN).canonical_json)
    assert "residency" not in plain
    assert all("server" not in model for model in plain["models"].values())
    # ...and present once declared, so the check above can tell.
    declared = json.loads(load(tmp_path, BASE).canonical_json)
    assert declared["residency"]["memory_gb"] == 4
    assert declared["models"]["alpha"]["server"]["gguf"] == "alpha.gguf"
    assert "server" not in declared["models"]["big"]


def test_declaring_a_server_changes_the_hash(tmp_path: Path) -> None:
    without = load(tmp_path, PLAIN).hash
    data = policy_data({"models.small.server": {"gguf": "s.gguf"}}, base=PLAIN)
    data["providers"]["srv"] = {
        "type": "openai",
        "base_url": f"http://127.0.0.1:{PORT_A}/v1",
        "locality": "local",
    }
    data["models"]["small"]["provider"] = "srv"
    with_server = load(tmp_path, data).hash
    data["models"]["small"].pop("server")
    assert load(tmp_path, data).hash != with_server
    assert without != with_server
