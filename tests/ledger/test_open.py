"""Opening a ledger from a URL, and fitting where the server expects a usage source."""

from __future__ import annotations

from pathlib import Path

import pytest

from rolegate.errors import Code, LedgerError
from rolegate.ledger import Ledger, SqliteLedger, default_path, open_ledger
from rolegate.ledger.postgres import redact
from rolegate.policy import Policy
from tests.ledger.backends import Backend
from tests.ledger.workers import T0


def test_default_is_a_sqlite_file_in_the_user_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_path() == tmp_path / "xdg" / "rolegate" / "ledger.sqlite3"
    ledger = open_ledger(None)
    try:
        assert isinstance(ledger, SqliteLedger)
        assert ledger.description == f"sqlite://{tmp_path}/xdg/rolegate/ledger.sqlite3"
        assert (tmp_path / "xdg" / "rolegate" / "ledger.sqlite3").is_file()
    finally:
        ledger.close()
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_path() == tmp_path / "home" / ".local" / "share" / "rolegate" / "ledger.sqlite3"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("sqlite:///:memory:", "no :memory:"),
        ("sqlite://", "absolute file path"),
        ("sqlite://relative/path.db", "absolute file path"),
        ("sqlite:///tmp/x.db?busy_timeout=soon", "busy_timeout"),
        ("sqlite:///tmp/x.db?cache=shared", "unknown SQLite ledger option"),
        ("mysql://root@localhost/db", "unknown ledger URL scheme 'mysql'"),
        ("ledger.db", "unknown ledger URL scheme"),
    ],
)
def test_bad_urls_are_refused_with_the_forms_that_work(url: str, says: str) -> None:
    with pytest.raises(LedgerError) as caught:
        open_ledger(url)
    assert caught.value.code == Code.BUDGET_UNAVAILABLE
    assert says in caught.value.message


def test_sqlalchemy_four_slash_form_is_the_same_absolute_path(tmp_path: Path) -> None:
    ledger = open_ledger(f"sqlite:///{tmp_path}/four.sqlite3")
    try:
        assert ledger.description == f"sqlite://{tmp_path}/four.sqlite3"
        assert (tmp_path / "four.sqlite3").is_file()
    finally:
        ledger.close()


def test_a_path_that_cannot_hold_a_file_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file, not a directory")
    with pytest.raises(LedgerError, match="cannot create the ledger directory"):
        open_ledger(f"sqlite://{tmp_path}/taken/ledger.sqlite3")
    (tmp_path / "dir.sqlite3").mkdir()
    with pytest.raises(LedgerError, match="unable to open"):
        open_ledger(f"sqlite://{tmp_path}/dir.sqlite3")


def test_unreachable_postgres_is_unavailable_at_open() -> None:
    with pytest.raises(LedgerError) as caught:
        open_ledger("postgresql://nobody:pw@127.0.0.1:1/none?connect_timeout=2")
    assert caught.value.code == Code.BUDGET_UNAVAILABLE
    assert "pw" not in caught.value.message  # the password never reaches a message


def test_descriptions_never_show_a_password() -> None:
    assert (
        redact("postgresql://ann:s3cret@db.example:5432/rg?password=x&sslmode=require")
        == "postgresql://ann@db.example:5432/rg?sslmode=require"
    )
    assert redact("postgresql://db.example/rg") == "postgresql://db.example/rg"


def test_a_ledger_is_a_usage_source_for_a_real_policy(
    ledger: Ledger, backend: Backend, codex_rs: Policy
) -> None:
    assert isinstance(ledger, Ledger)
    assert ledger.description.startswith(backend.kind[:6])
    lines = codex_rs.budgets_touching(job=None, role="auditor", model="x", provider="moonshot")
    assert {b.scope for b in lines} == {"global", "role", "provider"}
    ledger.reserve(
        request_id="r", owner="t", lines=lines, cost_micro=1_234, tokens=99, now=T0, lease_s=60
    )
    snap = ledger.snapshot(codex_rs, T0)
    assert {k: v.reserved_micro for k, v in snap.usage.items()} == {b.id: 1_234 for b in lines}
