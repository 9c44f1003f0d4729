"""The `rolegate` command on typer: help from the types, `--json` where a command had no
machine-readable output, one-line refusals of bad arguments (exit 2), shell completion, a
closed pipe, and the eval's progress lines when stderr is no terminal."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rolegate.cli import main
from rolegate.policy import load_policy
from tests.cli.conftest import Run, cli_env

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = str(ROOT / "examples" / "policies" / "000-mac-mini-lanes.yaml")

#: Every command, and the options its help must list (each with its type or metavar).
COMMANDS: dict[str, tuple[str, ...]] = {
    "check": ("--strict", "--skip-files", "--json"),
    "route": ("--policy", "--job", "--role", "--channel", "--context-tokens", "--input-tokens",
              "--needs", "--local-only", "--risk", "--max-output-tokens"),
    "eval-router": ("--policy", "--json"),
    "policy schema": (),
    "policy show": ("--policy",),
    "policy hash": ("--policy", "--json"),
    "budget": ("--policy", "--ledger", "--job", "--role", "--model", "--text", "--input-tokens",
               "--output-tokens", "--json"),
    "audit": ("--policy", "--ledger", "--since", "--until", "--kind", "--job", "--code",
              "--process", "--limit"),
    "plugins": ("--block", "--json"),
    "serve": ("--policy", "--transport", "--host", "--port", "--token-env", "--allow-host",
              "--header-timeout", "--keep-alive-timeout", "--max-connections", "--ledger",
              "--block", "--log-level"),
    "up": ("--policy", "--tier", "--json"),
    "down": ("--policy",),
    "status": ("--policy", "--json"),
    "models compat": ("--json",),
    "eval": ("--role", "--models", "--job", "--policy", "--ledger", "--block", "--format",
             "--quiet", "--log-level"),
    "evidence": ("--policy", "--ledger", "--suite", "--run", "--format"),
    "dashboard": ("--policy", "--ledger", "--host", "--port", "--open", "--block",
                  "--log-level"),
    "replay": ("--policy", "--since", "--until", "--ledger", "--json", "--show"),
    "report": ("--since", "--until", "--by", "--policy", "--ledger", "--json", "--csv"),
}  # fmt: skip
#: An option's row in rich help: the flag, then its type (<int>, <low|normal|high>) or
#: metavar (NEW.yaml, SECONDS).
TYPED = r"{flag}\s+(?:-\w\s+)?(?:<[^>]+>|[A-Z][\w.]*)"

ECHO_POLICY = """
version: 1
name: echo-eval
providers:
  echo: {type: echo, base_url: "echo://local", locality: local}
models:
  echo-1: {provider: echo, name: echo-1, context_window: 4096, reserve_tokens: 512,
           capabilities: [chat]}
roles:
  parrot: {model: echo-1}
defaults: {role: parrot, max_output_tokens: 64}
"""


def wide(tmp_path: Path) -> dict[str, str]:
    """Wide enough that no help row wraps."""
    return {**cli_env(tmp_path), "COLUMNS": "200"}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_lists_every_option_with_its_type(command: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "rolegate", *command.split(), "--help"],
        capture_output=True, text=True, encoding="utf-8", env=wide(tmp_path), timeout=120,
        check=False,
    )  # fmt: skip
    assert (done.returncode, done.stderr) == (0, "")
    assert f"Usage: rolegate {command}" in done.stdout
    for flag in COMMANDS[command]:
        assert re.search(TYPED.format(flag=re.escape(flag)), done.stdout), (flag, done.stdout)


def test_top_help_names_every_command_and_completion(rolegate: Run) -> None:
    done = rolegate("--help")
    assert done.returncode == 0
    for command in {c.split()[0] for c in COMMANDS}:
        assert re.search(rf"│ {re.escape(command)}\s", done.stdout), command
    assert "--install-completion" in done.stdout
    assert "--show-completion" in done.stdout


def test_check_json_has_one_object_per_file(rolegate: Run, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nname: broken\nroles: {r: {model: x}}\n")
    done = rolegate("check", "--skip-files", "--json", EXAMPLE, str(bad))
    assert done.returncode == 1
    good, broken = json.loads(done.stdout)
    policy = load_policy(EXAMPLE)
    assert good == {"path": EXAMPLE, "valid": True, "name": policy.name,
                    "revision": policy.revision, "hash": policy.hash,
                    "problems": [w.render(policy.source) for w in policy.warnings]}  # fmt: skip
    assert broken["path"] == str(bad)
    assert (broken["valid"], broken["name"], broken["hash"]) == (False, None, None)
    assert broken["problems"]
    assert "INVALID" in done.stderr  # the diagnostics still go to stderr


def test_plugins_json_is_a_list(rolegate: Run) -> None:
    done = rolegate("plugins", "--json", "--block", "echo")
    assert done.returncode == 0, done.stderr
    plugins = json.loads(done.stdout)
    assert isinstance(plugins, list)
    by_name = {p["name"]: p for p in plugins}
    assert "checker:exact" in by_name["checkers"]["provides"]
    assert by_name["echo"]["blocked"] is True
    assert set(by_name["checkers"]) == {"name", "distribution", "version", "provides",
                                        "blocked"}  # fmt: skip


def test_policy_hash_json(rolegate: Run) -> None:
    done = rolegate("policy", "hash", "--policy", EXAMPLE, "--json")
    assert done.returncode == 0
    assert json.loads(done.stdout) == {"hash": load_policy(EXAMPLE).hash}
    plain = rolegate("policy", "hash", "--policy", EXAMPLE)
    assert plain.stdout.strip() == load_policy(EXAMPLE).hash


@pytest.mark.parametrize(
    ("args", "said"),
    [
        ((), "Missing command"),
        (("nope",), "No such command 'nope'"),
        (("route",), "Missing argument"),
        (("route", "x", "--context-tokens", "many"), "--context-tokens"),
        (("route", "x", "--risk", "extreme"), "invalid choice: 'extreme'"),
        (("up", "--tier", "lukewarm"), "invalid choice: 'lukewarm'"),
        (("check",), "Missing argument"),
        (("check", EXAMPLE, "--bogus"), "No such option: --bogus"),
        (("eval", "suite.yaml"), "Missing option '--role'"),
        (("replay",), "Missing option '--policy'"),
        (("serve", "--port", "x"), "--port"),
        (("policy",), "Missing command"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    rolegate: Run, args: tuple[str, ...], said: str
) -> None:
    done = rolegate(*args)
    assert done.returncode == 2, (args, done.stderr)
    assert said in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith("rolegate")
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


def test_main_returns_the_exit_code_without_raising(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["route"]) == 2
    assert main(["--version"]) == 0
    assert main(["policy", "hash", "--policy", EXAMPLE]) == 0
    out = capsys.readouterr().out
    assert out.startswith("rolegate ")
    assert load_policy(EXAMPLE).hash in out


def test_repeatable_options_stay_repeatable() -> None:
    from rolegate.cli import parse_args

    args = parse_args(["eval", "s.yaml", "--role", "r", "--models", "a,b",
                                      "--models", "c", "--block", "x", "--block", "y"])  # fmt: skip
    assert (args.models, args.block) == (["a,b", "c"], ["x", "y"])


def test_show_completion_prints_a_script(rolegate: Run) -> None:
    done = rolegate("--show-completion", "bash")
    assert done.returncode == 0, done.stderr
    assert "_ROLEGATE_COMPLETE" in done.stdout
    assert "complete " in done.stdout


def test_help_into_a_closed_pipe_is_quiet(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "rolegate", "--help"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(tmp_path),
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()  # the reader goes away after one line, as `| head -1` does
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) in (0, 141)  # 0: the help fitted in the pipe's buffer
    assert "Traceback" not in err


def test_eval_prints_one_line_per_case_when_stderr_is_no_terminal(
    rolegate: Run, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(ECHO_POLICY)
    suite = ROOT / "examples" / "evals" / "tiny.yaml"
    ledger = f"sqlite://{tmp_path / 'eval.sqlite3'}"
    done = rolegate("eval", str(suite), "--role", "parrot", "--policy", str(policy),
                    "--ledger", ledger, "--format", "json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("[")]
    assert [line.split()[0] for line in lines] == ["[1/3]", "[2/3]", "[3/3]"]
    assert [line.split()[1:3] for line in lines] == [
        ["echo-1", "anything"], ["echo-1", "never"], ["echo-1", "forty-two"]
    ]  # fmt: skip
    assert "\x1b[" not in done.stderr  # no bar, no colour codes
    assert json.loads(done.stdout)["run"]["suite"] == "tiny"
    quiet = rolegate("eval", str(suite), "--role", "parrot", "--policy", str(policy),
                     "--ledger", ledger, "--quiet")  # fmt: skip
    assert not [line for line in quiet.stderr.splitlines() if line.startswith("[")]
