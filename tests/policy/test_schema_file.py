"""The policy's JSON Schema ships in the package for editors, and stays what the code says.

After changing rolegate/policy/schema.py, regenerate it with

    bash scripts/write_schema.sh

(it writes `rolegate policy schema` to src/rolegate/policy/policy.schema.json).
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

import jsonschema
import pytest
import yaml

from rolegate.policy import load_policy
from rolegate.policy.schema import PolicyDocument

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "src" / "rolegate" / "policy" / "policy.schema.json"
POLICIES = [
    *sorted((ROOT / "examples" / "policies").glob("*.yaml")),
    ROOT / "examples" / "plugins" / "rolegate-echo" / "echo-policy.yaml",
]
MODELINE = "# yaml-language-server: $schema="


def test_the_shipped_schema_is_up_to_date() -> None:
    expected = json.dumps(PolicyDocument.model_json_schema(), indent=2) + "\n"
    assert SCHEMA.read_text("utf-8") == expected, (
        "src/rolegate/policy/policy.schema.json is out of date with rolegate/policy/schema.py: "
        "run `bash scripts/write_schema.sh` and commit the result"
    )


def test_the_schema_is_package_data() -> None:
    # Found through the package, as an installed wheel finds it (hatch ships every file
    # under src/rolegate).
    shipped = files("rolegate.policy").joinpath("policy.schema.json")
    assert json.loads(shipped.read_text("utf-8"))["title"] == "PolicyDocument"


@pytest.mark.parametrize("path", POLICIES, ids=lambda p: p.name)
def test_example_policies_point_editors_at_the_schema_and_validate(path: Path) -> None:
    first = path.read_text("utf-8").splitlines()[0]
    assert first.startswith(MODELINE), f"{path.name}: the first line must be the schema modeline"
    target = (path.parent / first.removeprefix(MODELINE)).resolve()
    assert target == SCHEMA.resolve()
    # What an editor checks while you type agrees with what rolegate accepts.
    jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text("utf-8"))).validate(
        yaml.safe_load(path.read_text("utf-8"))
    )


def test_a_schema_key_is_accepted_and_not_hashed(tmp_path: Path) -> None:
    source = (ROOT / "examples" / "policies" / "003-sophie-context.yaml").read_text("utf-8")
    plain = load_policy(ROOT / "examples" / "policies" / "003-sophie-context.yaml")
    with_key = tmp_path / "p.yaml"
    with_key.write_text('"$schema": ./policy.schema.json\n' + source, "utf-8")
    assert load_policy(with_key).hash == plain.hash
    as_json = tmp_path / "p.json"
    doc = {"$schema": "https://example.invalid/policy.schema.json", **yaml.safe_load(source)}
    as_json.write_text(json.dumps(doc), "utf-8")
    assert load_policy(as_json).hash == plain.hash
