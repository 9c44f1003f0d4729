"""`rolegate report` as a subprocess: the table, --json and --csv over a seeded ledger,
money in dollars, and its refusals of bad arguments; `rolegate --help`'s exit codes."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from rolegate.engine.reports import NONE, Tally, dollars
from tests.cli.conftest import Run, table_head, table_rows
from tests.engine.test_reports import EXPECTED

WINDOW = ("--since", "2025-03-01", "--until", "2025-03-03T00:00Z")
#: Two providers named as the seeded calls name them, and the models the seed uses.
POLICY = """
version: 1
name: report-test
providers:
  local: {type: echo, base_url: "echo://", locality: local}
  cloud: {type: echo, base_url: "echo://", locality: local}
models:
  m-a: {provider: local, name: m-a, context_window: 4096, reserve_tokens: 512}
  m-b: {provider: cloud, name: m-b, context_window: 4096, reserve_tokens: 512}
  m-c: {provider: local, name: m-c, context_window: 4096, reserve_tokens: 512}
roles:
  coder: {model: m-a}
"""
HEAD = ["decisions", "calls", "input_tokens", "output_tokens", "spend_usd", "refusals",
        "fallbacks", "escalations", "consents_granted", "consents_denied", "eval_calls",
        "eval_spend_usd"]  # fmt: skip


def _shown(t: Tally) -> list[str]:
    """A tally as the table shows it: counts with separators, money as $ with 6 places."""
    return [f"{t.decisions:,}", f"{t.calls:,}", f"{t.input_tokens:,}", f"{t.output_tokens:,}",
            f"${t.cost_micro // 10**6:,}.{t.cost_micro % 10**6:06d}", f"{t.refusals:,}",
            f"{t.fallbacks:,}", f"{t.escalations:,}", f"{t.consents_granted:,}",
            f"{t.consents_denied:,}", f"{t.eval_calls:,}",
            f"${t.eval_cost_micro // 10**6:,}.{t.eval_cost_micro % 10**6:06d}"]  # fmt: skip


def test_the_table_by_model_in_dollars_with_a_total(rolegate: Run, seeded: str) -> None:
    done = rolegate("report", "--ledger", seeded, *WINDOW)
    assert (done.returncode, done.stderr) == (0, "")
    out = done.stdout
    assert "audit trail by model, 2025-03-01 00:00 UTC to 2025-03-03 00:00 UTC (12 records)" in out
    rows = table_rows(out)
    assert table_head(out) == [
        "model",
        "decisions", "calls", "input tok", "output tok", "spend", "refusals", "fallbacks",
        "escalations", "granted", "denied", "eval calls", "eval spend",
    ]  # fmt: skip
    assert rows["m-a"] == ["1", "2", "1,300", "200", "$0.004200", "1", "0", "1", "2", "1", "0",
                           "$0.000000"]  # fmt: skip
    assert rows["m-b"][4] == "$1.250000"  # spend: the eval call's $0.03 is apart
    assert rows["m-b"][-2:] == ["1", "$0.030000"]
    assert rows["total"] == ["3", "4", "3,800", "1,300", "$1.254200", "2", "1", "1", "2", "1",
                             "1", "$0.030000"]  # fmt: skip
    assert list(rows) == [NONE, "m-a", "m-b", "m-c", "total"]
    assert {key: _shown(t) for key, t in EXPECTED["model"].items()} == {
        key: cells for key, cells in rows.items() if key != "total"
    }
    assert "micro" not in out
    assert "\x1b[" not in out  # no terminal: no colour codes


def test_json_by_day_is_dollars_per_day_and_a_total(rolegate: Run, seeded: str) -> None:
    done = rolegate("report", "--ledger", seeded, *WINDOW, "--by", "day", "--json")
    assert (done.returncode, done.stderr) == (0, "")
    shown = json.loads(done.stdout)
    assert (shown["by"], shown["since"], shown["until"], shown["records"]) == (
        "day", "2025-03-01T00:00:00+00:00", "2025-03-03T00:00:00+00:00", 12
    )  # fmt: skip
    days = {row.pop("day"): row for row in shown["rows"]}
    for day, tally in EXPECTED["day"].items():
        assert days[day] == tally.as_dict()
    assert days["2025-03-01"]["spend_usd"] == 1.2542  # the day's last microsecond included
    assert days["2025-03-02"]["consents_denied"] == 1  # the next day's first
    assert shown["total"]["spend_usd"] == 1.2542
    assert shown["total"]["eval_spend_usd"] == 0.03


def test_csv_by_provider_takes_the_providers_from_the_policy(
    rolegate: Run, seeded: str, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    done = rolegate("report", "--ledger", seeded, *WINDOW, "--by", "provider", "--csv",
                    "--policy", str(policy))  # fmt: skip
    assert (done.returncode, done.stderr) == (0, "")
    lines = list(csv.reader(io.StringIO(done.stdout)))
    assert lines[0] == ["provider", *HEAD]
    expected = [*EXPECTED["provider"].items(), ("(total)", sum_of(EXPECTED["provider"]))]
    assert lines[1:] == [[key, *_csv(t)] for key, t in expected]
    assert lines[-1][HEAD.index("spend_usd") + 1] == "1.254200"


def sum_of(groups: dict[str, Tally]) -> Tally:
    total = Tally()
    for tally in groups.values():
        total.merge(tally)
    return total


def _csv(t: Tally) -> list[str]:
    return [str(t.decisions), str(t.calls), str(t.input_tokens), str(t.output_tokens),
            dollars(t.cost_micro), str(t.refusals), str(t.fallbacks), str(t.escalations),
            str(t.consents_granted), str(t.consents_denied), str(t.eval_calls),
            dollars(t.eval_cost_micro)]  # fmt: skip


def test_an_empty_window_still_has_a_total(rolegate: Run, seeded: str) -> None:
    done = rolegate("report", "--ledger", seeded, "--since", "2030-01-01", "--by", "job")
    assert done.returncode == 0
    assert "no audit records in the window" in done.stdout
    assert table_rows(done.stdout)["total"][:5] == ["0", "0", "0", "0", "$0.000000"]


def test_bad_arguments_exit_2_without_a_traceback(rolegate: Run, seeded: str) -> None:
    for args, said in (
        (("--since", "yesterday"), "--since 'yesterday' is no time"),
        (("--since", "1d", "--until", "2d"), "--until must be later than --since"),
        (("--by", "colour"), "invalid choice: 'colour'"),
        (("--json", "--csv"), "not allowed with argument"),
    ):
        done = rolegate("report", "--ledger", seeded, *args)
        assert done.returncode == 2, args
        assert said in done.stderr
        assert "Traceback" not in done.stderr
        assert done.stdout == ""


def test_a_missing_ledger_file_is_not_created(rolegate: Run, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.sqlite3"
    done = rolegate("report", "--ledger", f"sqlite://{missing}")
    assert done.returncode == 2
    assert f"no ledger at {missing}" in done.stderr
    assert not missing.exists()


def test_help_documents_the_exit_codes(rolegate: Run) -> None:
    done = rolegate("--help")
    assert done.returncode == 0
    codes = done.stdout.split("exit codes:", 1)[1]
    for code, meaning in (("0", "ok"), ("1", "policy, ledger or plugin error"),
                          ("2", "bad request or arguments"), ("3", "refused"),
                          ("4", "eval: not every case could be judged"), ("130", "interrupted"),
                          ("141", "stdout closed early")):  # fmt: skip
        assert f"  {code.ljust(4)} {meaning}" in codes
    assert "report" in done.stdout  # the command is registered
