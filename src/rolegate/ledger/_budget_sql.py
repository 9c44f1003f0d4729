"""The budget ledger's rules as SQL, shared by the SQLite and PostgreSQL backends.

Each function runs inside one transaction the backend opened (``Tx``); see ``_engine`` for
how writers are serialized and the order locks are taken in.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import datetime

from rolegate.errors import Code, RequestError
from rolegate.ledger._tx import Tx
from rolegate.ledger.records import Reservation, lease_us, refusal, to_us, to_utc, unique_lines
from rolegate.policy.budget import window_start
from rolegate.policy.compiled import BudgetLine
from rolegate.policy.decision import ScopeUsage

_REQUEST_COLUMNS = (
    "request_id, owner, line_ids, at_us, expires_us, state, reserved_micro, reserved_tokens"
)


def usage(tx: Tx, lines: Sequence[BudgetLine], now: datetime) -> dict[str, ScopeUsage]:
    """Committed and unexpired reserved amounts per line, each in its own window.

    One statement, so every line is read from the same snapshot.
    """
    if not lines:
        return {}
    utc = to_utc(now)
    where: list[str] = []
    params: list[object] = []
    for line in lines:
        where.append("(line_id = ? AND at_us >= ?)")
        params += [line.id, to_us(window_start(line, utc))]
    params.append(to_us(utc))
    found = tx.rows(
        "SELECT line_id, state, SUM(cost_micro), SUM(tokens) FROM rolegate_charges"
        f" WHERE ({' OR '.join(where)}) AND (state = 'committed' OR expires_us > ?)"
        " GROUP BY line_id, state",
        params,
    )
    sums: dict[str, dict[str, tuple[int, int]]] = {}
    for line_id, state, micro, tokens in found:
        # int(): PostgreSQL's SUM(bigint) is a numeric (Decimal); never let it become a float.
        sums.setdefault(line_id, {})[state] = (int(micro), int(tokens))
    result: dict[str, ScopeUsage] = {}
    for line_id, by_state in sums.items():
        spent = by_state.get("committed", (0, 0))
        held = by_state.get("reserved", (0, 0))
        result[line_id] = ScopeUsage(spent[0], held[0], spent[1], held[1])
    return result


def do_reserve(
    tx: Tx,
    *,
    request_id: str,
    owner: str,
    lines: Sequence[BudgetLine],
    cost_micro: int,
    tokens: int,
    now: datetime,
    lease_s: float,
) -> None:
    check_amounts(cost_micro, tokens)
    if not request_id:
        raise RequestError("request_id must be a non-empty string", code=Code.INVALID_ARGUMENT)
    ordered = unique_lines(lines)
    now_us = to_us(now)
    expires_us = now_us + lease_us(lease_s)
    added = tx.run(
        f"INSERT INTO rolegate_requests ({_REQUEST_COLUMNS})"
        " VALUES (?, ?, ?, ?, ?, 'reserved', ?, ?) ON CONFLICT (request_id) DO NOTHING",
        [request_id, owner, json.dumps([line.id for line in ordered]), now_us, expires_us,
         cost_micro, tokens],
    )  # fmt: skip
    if added != 1:
        raise RequestError(
            f"request_id {request_id!r} was already used; every call needs a fresh one",
            code=Code.INVALID_ARGUMENT,
        )
    tx.lock_lines([line.id for line in ordered])
    used = usage(tx, ordered, now)
    for line in ordered:
        u = used.get(line.id, ScopeUsage())
        refused = refusal(
            line,
            now,
            spent_micro=u.spent_micro + u.reserved_micro,
            spent_tokens=u.spent_tokens + u.reserved_tokens,
            cost_micro=cost_micro,
            tokens=tokens,
        )
        if refused is not None:
            raise refused  # the backend rolls the request row back with the transaction
    _insert_charges(
        tx, [(request_id, line.id, now_us, "reserved", expires_us, cost_micro, tokens)
             for line in ordered],
    )  # fmt: skip


def do_commit(tx: Tx, request_id: str, *, cost_micro: int, tokens: int, now: datetime) -> bool:
    """Charge the request; False (and nothing written) when it was committed already."""
    check_amounts(cost_micro, tokens)
    found = load(tx, request_id, lock=True)
    if found is None:
        raise RequestError(
            f"no reservation {request_id!r} was ever made; reserve before calling a provider",
            code=Code.INVALID_ARGUMENT,
        )
    if found.state == "committed":
        return False  # idempotent: the first commit's charge stands
    # Released or expired reservations are still charged: the provider call did happen.
    tx.lock_lines(sorted(found.line_ids))
    tx.run("DELETE FROM rolegate_charges WHERE request_id = ?", [request_id])
    # Charged in the window the call was admitted in, not the one it finished in.
    _insert_charges(
        tx, [(request_id, line_id, found.at_us, "committed", None, cost_micro, tokens)
             for line_id in sorted(found.line_ids)],
    )  # fmt: skip
    tx.run(
        "UPDATE rolegate_requests SET state = 'committed', charged_micro = ?,"
        " charged_tokens = ?, settled_us = ? WHERE request_id = ?",
        [cost_micro, tokens, to_us(now), request_id],
    )
    return True


def do_release(tx: Tx, request_id: str, now: datetime) -> None:
    found = load(tx, request_id, lock=True)
    if found is None or found.state != "reserved":
        return  # unknown, already released, expired or committed: nothing is held
    tx.run("DELETE FROM rolegate_charges WHERE request_id = ? AND state = 'reserved'", [request_id])
    tx.run(
        "UPDATE rolegate_requests SET state = 'released', settled_us = ? WHERE request_id = ?",
        [to_us(now), request_id],
    )


def do_sweep(tx: Tx, now: datetime) -> int:
    now_us = to_us(now)
    expired = [
        row[0]
        for row in tx.rows(
            "SELECT request_id FROM rolegate_requests WHERE state = 'reserved'"
            " AND expires_us <= ? ORDER BY request_id" + tx.for_update,
            [now_us],
        )
    ]
    for request_id in expired:
        tx.run(
            "UPDATE rolegate_requests SET state = 'expired', settled_us = ? WHERE request_id = ?",
            [now_us, request_id],
        )
        tx.run(
            "DELETE FROM rolegate_charges WHERE request_id = ? AND state = 'reserved'",
            [request_id],
        )
    return len(expired)


def _insert_charges(tx: Tx, rows: list[tuple[object, ...]]) -> None:
    """All of a request's charge rows in one statement: one round trip while locked."""
    if not rows:
        return
    values = ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * len(rows))
    tx.run(
        "INSERT INTO rolegate_charges"
        f" (request_id, line_id, at_us, state, expires_us, cost_micro, tokens) VALUES {values}",
        [value for row in rows for value in row],
    )


def load(tx: Tx, request_id: str, *, lock: bool) -> Reservation | None:
    found = tx.rows(
        f"SELECT {_REQUEST_COLUMNS} FROM rolegate_requests WHERE request_id = ?"
        + (tx.for_update if lock else ""),
        [request_id],
    )
    if not found:
        return None
    rid, owner, line_ids, at_us, expires_us, state, micro, tokens = found[0]
    return Reservation(
        rid, owner, tuple(json.loads(line_ids)), at_us, expires_us, state, micro, tokens
    )


def do_audit(tx: Tx, record_json: str | None) -> None:
    """Append a record already checked and encoded by ``base.audit_json`` (None: nothing)."""
    if record_json is not None:
        tx.run(
            "INSERT INTO rolegate_audit (at_us, record) VALUES (?, ?)",
            [time.time_ns() // 1000, record_json],
        )


def do_recent_audit(tx: Tx, limit: int) -> list[tuple[int, dict[str, object]]]:
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    found = tx.rows("SELECT at_us, record FROM rolegate_audit ORDER BY id DESC LIMIT ?", [limit])
    return [(int(at), dict(json.loads(record))) for at, record in found]


def check_amounts(cost_micro: int, tokens: int) -> None:
    for value, name in ((cost_micro, "cost_micro"), (tokens, "tokens")):
        # bool is an int subclass and floats would silently round: accept true ints only.
        if type(value) is not int or value < 0:
            raise RequestError(f"{name} must be an int >= 0, got {value!r}")
