"""Output contracts: parsing, required keys, JSON types, list caps, confidence, and the schema
handed to providers for constrained output."""

from __future__ import annotations

import json

import jsonschema
import pytest

from rolegate.policy.contracts import check_output
from rolegate.policy.schema import Contract

PLAN = Contract(
    required=("plan", "confidence"),
    types={"plan": "string", "steps": "array", "done": "boolean", "n": "integer"},
    confidence_field="confidence",
    max_items=2,
    enforce=True,
)


def test_a_valid_output_is_parsed_with_its_confidence() -> None:
    result = check_output(PLAN, '```json\n{"plan": "split", "confidence": 0.4, "steps": [1]}\n```')
    assert result.valid
    assert result.structured == {"plan": "split", "confidence": 0.4, "steps": [1]}
    assert result.confidence == 0.4


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("plain words", "not JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"plan": "x"}', "missing required key 'confidence'"),
        ('{"plan": 3, "confidence": 0.5}', "'plan' must be of JSON type string"),
        ('{"plan": "x", "confidence": 0.5, "done": 1}', "'done' must be of JSON type boolean"),
        ('{"plan": "x", "confidence": 0.5, "n": true}', "'n' must be of JSON type integer"),
        ('{"plan": "x", "confidence": 0.5, "steps": [1, 2, 3]}', "'steps' has 3 items; at most 2"),
        ('{"plan": "x", "confidence": 1.5}', "'confidence' must be a number from 0 to 1"),
        ('{"plan": "x", "confidence": true}', "'confidence' must be a number from 0 to 1"),
    ],
)
def test_violations_are_reported_not_hidden(text: str, error: str) -> None:
    result = check_output(PLAN, text)
    assert not result.valid
    assert result.structured is None
    assert any(error in e for e in result.errors), result.errors


def test_the_provider_schema_accepts_exactly_what_the_checker_accepts() -> None:
    schema = PLAN.json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    good = {"plan": "x", "confidence": 0.5, "steps": [1, 2], "done": False, "n": 3}
    jsonschema.validate(good, schema)
    assert check_output(PLAN, json.dumps(good)).valid
    for bad in (
        {"plan": "x"},
        {"plan": "x", "confidence": 2},
        {"plan": "x", "confidence": 0.5, "steps": [1, 2, 3]},
        {"plan": 1, "confidence": 0.5},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
        assert not check_output(PLAN, json.dumps(bad)).valid
