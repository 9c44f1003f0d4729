"""`rolegate audit`'s filters, `rolegate budget`'s table (dollars, window, reset, bars) and
its --json, and a reader closing the pipe early, all as a user runs them (subprocesses)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from rolegate.engine.budgets import budget_report
from rolegate.engine.requests import BudgetQuery
from rolegate.engine.store import Store
from rolegate.ledger import open_ledger
from rolegate.policy import load_policy
from rolegate.policy.budget import utcnow
from tests.cli.conftest import Run, cli_env, seed_sqlite, table_head, table_lines
from tests.engine.test_reports import SEED

# m-a costs 1 USD per Mtok either way: one micro-dollar per token.
POLICY = """
version: 1
name: budget-cli-test
providers:
  echo: {type: echo, base_url: "echo://", locality: local}
models:
  m-a: {provider: echo, name: m-a, context_window: 4096, reserve_tokens: 512,
        price: {input_per_mtok: "1", output_per_mtok: "1"}}
roles:
  coder: {model: m-a}
jobs:
  fix: {role: coder, budgets: [{window: day, usd: "1.00"}]}
budgets:
  - {scope: global, window: day, usd: "2.00", tokens: 100000}
  - {scope: model, target: m-a, window: rolling, window_seconds: 3600, tokens: 1000}
"""


def _records(stdout: str) -> list[tuple[int, dict[str, object]]]:
    """(microseconds since the epoch, record) of each line: its 'at' is when it was written."""
    rows = []
    for line in stdout.splitlines():
        record = json.loads(line)
        at = datetime.fromisoformat(record.pop("at"))
        rows.append(((at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1), record))
    return rows


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), [14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0]),  # newest first
        (("--limit", "3"), [14, 13, 12]),
        (("--kind", "call", "--job", "fix"), [5, 4, 2]),
        (("--kind", "call", "--job", "fix", "--limit", "2"), [5, 4]),
        (("--code", "ROUTED"), [14, 11, 1, 0]),
        (("--code", "OK", "--kind", "call"), [12, 10, 4, 2]),
        (("--kind", "consent"), [7, 6]),
        (("--job", "docs"), [12, 11]),
        # since inclusive, until exclusive: the consent a microsecond before D2 is out,
        # the one at D2's first microsecond in, the escalation at 02:00 out
        (("--since", "2025-03-02", "--until", "2025-03-02T02:00Z"), [8, 7]),
        (("--since", "2025-03-02T04:00:00+00:00", "--kind", "decision"), [14, 11]),
        (("--limit", "0"), []),
    ],
)
def test_audit_filters(
    rolegate: Run, seeded: str, args: tuple[str, ...], expected: list[int]
) -> None:
    done = rolegate("audit", "--ledger", seeded, *args)
    assert (done.returncode, done.stderr) == (0, "")
    assert _records(done.stdout) == [SEED[i] for i in expected]  # each with its time
    for line in done.stdout.splitlines():  # one JSON object a line, keys sorted
        assert line == json.dumps(json.loads(line), sort_keys=True)


def test_audit_refuses_bad_filters(rolegate: Run, seeded: str) -> None:
    for args, said in (
        (("--limit", "-1"), "not a whole number >= 0"),
        (("--since", "soon"), "--since 'soon' is no time"),
        (("--since", "2d", "--until", "3d"), "--until must be later than --since"),
        (("--kind", "nothing"), "INVALID_ARGUMENT: --kind 'nothing' is not a kind of audit"),
    ):
        done = rolegate("audit", "--ledger", seeded, *args)
        assert done.returncode == 2, args
        assert said in done.stderr
        assert "Traceback" not in done.stderr


@pytest.fixture
def budget_args(tmp_path: Path) -> tuple[str, ...]:
    """A policy with money, token and rolling caps, and a ledger where $0.25 (500 tokens)
    was spent and $0.25 (300 tokens) is reserved on every line today."""
    policy_file = tmp_path / "budget.yaml"
    policy_file.write_text(POLICY)
    policy = load_policy(str(policy_file))
    url = f"sqlite://{tmp_path / 'budget.sqlite3'}"
    ledger = open_ledger(url)
    lines = policy.budgets_touching(job="fix", role="coder", model="m-a", provider="echo")
    now = utcnow()
    try:
        ledger.reserve(request_id="r-1", owner="test", lines=lines, cost_micro=500_000,
                       tokens=600, now=now, lease_s=3600)  # fmt: skip
        ledger.commit("r-1", cost_micro=250_000, tokens=500, now=now)
        ledger.reserve(request_id="r-2", owner="test", lines=lines, cost_micro=250_000,
                       tokens=300, now=now, lease_s=3600)  # fmt: skip
    finally:
        ledger.close()
    return ("--policy", str(policy_file), "--ledger", url)


def test_budget_table_shows_dollars_windows_resets_and_bars(
    rolegate: Run, budget_args: tuple[str, ...]
) -> None:
    before = utcnow()
    done = rolegate("budget", *budget_args)
    after = utcnow()
    assert (done.returncode, done.stderr) == (0, "")
    assert "budgets of budget-cli-test revision 0" in done.stdout
    assert table_head(done.stdout) == [
        "line", "window", "resets", "spent", "reserved", "cap", "left", "spent+reserved of cap"
    ]  # fmt: skip
    rows = table_lines(done.stdout)
    resets = {f"{(t + timedelta(days=1)).date()} 00:00 UTC" for t in (before, after)}
    global_money, global_tokens, rolling, job = rows
    assert global_money[:3] == ["global:*:day", "day", global_money[2]]
    assert global_money[2] in resets
    assert global_money[3:] == ["$0.250000", "$0.250000", "$2.000000", "$1.500000",
                                "██▒▒▒░░░░░░░░░░░░░░░ 25%"]  # fmt: skip
    assert global_tokens == ["", "", "", "500 tok", "300 tok", "100,000 tok", "99,200 tok",
                             "░░░░░░░░░░░░░░░░░░░░ 0%"]  # fmt: skip
    assert rolling == ["model:m-a:rolling3600s", "rolling 3600s", "slides", "500 tok",
                       "300 tok", "1,000 tok", "200 tok", "██████████▒▒▒▒▒▒░░░░ 80%"]  # fmt: skip
    assert job[:2] == ["job:fix:day", "day"]
    assert job[3:] == ["$0.250000", "$0.250000", "$1.000000", "$0.500000",
                       "█████▒▒▒▒▒░░░░░░░░░░ 50%"]  # fmt: skip
    assert "micro" not in done.stdout


def test_budget_check_that_does_not_fit_exits_3_and_says_why(
    rolegate: Run, budget_args: tuple[str, ...]
) -> None:
    done = rolegate("budget", *budget_args, "--job", "fix", "--input-tokens", "3000",
                    "--output-tokens", "500")  # fmt: skip
    assert done.returncode == 3
    assert (
        "check m-a: refused BUDGET_EXHAUSTED: worst case $0.003500 does not fit budget "
        "model:m-a:rolling3600s (3,000 input tokens, exact (given by the caller))"
    ) in done.stdout


def test_budget_json_is_the_report_as_before(rolegate: Run, budget_args: tuple[str, ...]) -> None:
    done = rolegate("budget", *budget_args, "--json")
    assert (done.returncode, done.stderr) == (0, "")
    policy = load_policy(budget_args[1])
    ledger = open_ledger(budget_args[3])
    try:
        report = budget_report(policy, Store(policy, ledger=ledger), BudgetQuery())
    finally:
        ledger.close()
    shown = json.loads(done.stdout)
    assert shown == json.loads(report.model_dump_json())
    assert done.stdout == report.model_dump_json(indent=2) + "\n"
    assert [s["spent_usd_micro"] for s in shown["scopes"]] == [250_000, 250_000, 250_000]


@pytest.fixture
def big_ledger(tmp_path: Path) -> str:
    """5000 audit records: several pipe buffers of JSON lines."""
    rows = [(i, {"kind": "call", "n": i, "model": "m-a", "code": "OK"}) for i in range(5000)]
    return seed_sqlite(tmp_path / "big.sqlite3", rows)


def test_a_reader_closing_the_pipe_early_ends_it_quietly(big_ledger: str, tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "rolegate", "audit", "--ledger", big_ledger, "--limit", "5000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(tmp_path),
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()  # as `head -1` does
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141
    assert json.loads(first) == {
        "kind": "call", "n": 4999, "model": "m-a", "code": "OK",
        "at": "1970-01-01T00:00:00.004999Z",  # the seed wrote record n at n microseconds
    }  # fmt: skip
    assert "Traceback" not in err
    assert "BrokenPipeError" not in err
    assert err == ""


def test_piped_into_head_in_a_shell(big_ledger: str, tmp_path: Path) -> None:
    script = (f'"{sys.executable}" -m rolegate audit --ledger "{big_ledger}" --limit 5000 '
              '--kind call | head -1; echo "status ${PIPESTATUS[0]}" >&2')  # fmt: skip
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                          env=cli_env(tmp_path), timeout=120, check=False)  # fmt: skip
    assert len(done.stdout.splitlines()) == 1
    assert done.stderr == "status 141\n"
