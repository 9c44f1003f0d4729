"""`rolegate eval-router` as a user runs it: a policy's intents measured on labelled tasks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.cli.conftest import Run, cli_env

POLICY = """
version: 1
name: eval-router-test
providers:
  local: {type: openai, base_url: "http://127.0.0.1:9/v1", locality: local}
models:
  m: {provider: local, name: m, context_window: 4096, reserve_tokens: 512,
      capabilities: [chat, code, summarize]}
roles:
  assistant: {model: m}
intents:
  code:
    requires: [code]
    examples: ["refactor this python function", "fix the failing unit test in utils.py",
               "write a bash script that renames files", "why does this C code segfault"]
  summarize:
    requires: [summarize]
    examples: ["summarize this article", "give me the tl;dr of this thread",
               "condense the meeting notes into bullet points", "a short summary of the report"]
defaults: {role: assistant, max_output_tokens: 64}
"""


def test_eval_router_measures_and_says_when_tasks_are_its_own_examples(
    rolegate: Run, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    labelled = tmp_path / "tasks.jsonl"
    rows = [
        {"task": "please summarise this long email thread for me", "intent": "summarize"},
        {"task": "my rust program panics on unwrap, can you fix it", "intent": "code"},
        {"task": "summarize this article", "intent": "summarize"},  # one of the examples
    ]
    labelled.write_text("".join(json.dumps(row) + "\n" for row in rows))
    done = rolegate("eval-router", str(labelled), "--policy", str(policy), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["tasks"] == 3
    assert report["accuracy"] == 1.0
    assert "note: 1 of 3 tasks are examples of the policy's intents" in done.stderr
    # Held-out tasks only: no note.
    labelled.write_text("".join(json.dumps(row) + "\n" for row in rows[:2]))
    done = rolegate("eval-router", str(labelled), "--policy", str(policy), "--json")
    assert (done.returncode, done.stderr) == (0, "")
    assert json.loads(done.stdout)["tasks"] == 2


def test_eval_router_refuses_files_it_cannot_read(rolegate: Run, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(b'{"task": "r\xe9sum\xe9 this", "intent": "summarize"}\n')
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    blank = tmp_path / "blank.jsonl"
    blank.write_text('{"task": "fix it", "intent": "code"}\n{"task": "  ", "intent": "code"}\n')
    for path, said in (
        (tmp_path / "missing.jsonl", "cannot be read as UTF-8 text (FileNotFoundError)"),
        (tmp_path, "cannot be read as UTF-8 text (IsADirectoryError)"),
        (latin1, "cannot be read as UTF-8 text (UnicodeDecodeError)"),
        (empty, "holds no labelled tasks"),
        (blank, "blank.jsonl:2: the task is empty"),
    ):
        done = rolegate("eval-router", str(path), "--policy", str(policy))
        assert done.returncode == 2, (path, done.stderr)
        assert "INVALID_ARGUMENT: " in done.stderr
        assert said in done.stderr
        assert "Traceback" not in done.stderr


def test_route_takes_an_argument_that_is_not_utf8(rolegate: Run, tmp_path: Path) -> None:
    # Bytes that are not UTF-8 reach Python as lone surrogates; the keyword patterns (the
    # default policy has some) must not crash on them.
    done = subprocess.run(
        [sys.executable, "-m", "rolegate", "route", b"\xff\xfe fix the bug in utils.py"],
        capture_output=True,
        env=cli_env(tmp_path),
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert b"Traceback" not in done.stderr
    assert b"ROUTED" in done.stdout
