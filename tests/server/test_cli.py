from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rolegate.cli import main
from tests.conftest import EXAMPLES, example_path


def test_check_passes_every_example_and_prints_hash(capsys: pytest.CaptureFixture[str]) -> None:
    paths = [str(p) for p in sorted(EXAMPLES.glob("*.yaml"))]
    assert main(["check", "--skip-files", *paths]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(paths)
    assert all(" OK " in line and "sha256:" in line for line in out)


def test_check_looks_for_the_servers_model_files(capsys: pytest.CaptureFixture[str]) -> None:
    # Seed 004's servers name model files this repository does not hold.
    assert main(["check", str(example_path("004"))]) == 1
    err = capsys.readouterr().err
    assert "models.qwen3-next-80b-a3b.server.gguf: error: no model file at" in err
    assert "models.qwen3-coder-30b-a3b.server.draft.gguf: error: no draft file at" in err


def test_check_fails_with_every_error_listed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "version: 1\nname: bad\nproviders: {}\n"
        "models:\n  m: {provider: nope, name: m, context_window: 10, reserve_tokens: 10}\n"
        "roles:\n  r: {model: ghost}\n"
    )
    assert main(["check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}: models.m.provider: error: unknown provider 'nope'" in err
    assert f"{bad}: models.m.reserve_tokens: error:" in err
    assert f"{bad}: roles.r.model: error: unknown model 'ghost'" in err
    assert "INVALID (3 error(s))" in err


def test_check_strict_fails_on_warnings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--strict", str(example_path("001"))]) == 1
    assert "INVALID (warnings with --strict)" in capsys.readouterr().out


def test_route_prints_decision_json(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "route",
            "hi",
            "--role",
            "chat",
            "--context-tokens",
            "30000",
            "--policy",
            str(example_path("003")),
        ]
    )
    decision = json.loads(capsys.readouterr().out)
    assert code == 3
    assert decision["code"] == "OVER_BUDGET"
    assert decision["tokens"]["max_input_tokens"] == 28768


def test_route_unknown_job_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["route", "x", "--job", "nope", "--policy", str(example_path("000"))]) == 2
    assert capsys.readouterr().err.startswith("UNKNOWN_JOB: unknown job 'nope'")


def test_policy_schema_and_show(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["additionalProperties"] is False
    assert "models" in schema["required"]
    assert main(["policy", "show"]) == 0
    assert "default-local-ollama" in capsys.readouterr().out


def test_python_dash_m_entry_point() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "rolegate", "check", str(example_path("000"))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "mac-mini-lanes" in proc.stdout
