"""The ledger's rules as SQL, shared by the SQLite and PostgreSQL backends.

Each function runs inside one transaction the backend opened (``Tx``). The backends differ
only in how they serialize writers on a budget line: SQLite takes the database write lock
(``BEGIN IMMEDIATE``), PostgreSQL locks one row per line, in line-id order.

Lock order, the same everywhere so that transactions cannot deadlock:
request row -> budget line rows (by id) -> charge rows, and for the work store
stage claim row -> stage owner row (see ``do_claim_stage``).
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, Protocol

from rolegate.errors import Code, LedgerError, RequestError
from rolegate.ledger.base import (
    HasBudgets,
    Reservation,
    audit_json,
    check_names,
    check_optional_text,
    check_step,
    check_text,
    check_texts,
    check_verdict,
    claimed_refusal,
    decision_reused,
    lease_us,
    lost_claim_refusal,
    owner_refusal,
    refusal,
    storable,
    to_us,
    to_utc,
    unique_lines,
)
from rolegate.policy.budget import window_start
from rolegate.policy.compiled import BudgetLine
from rolegate.policy.decision import BudgetSnapshot, ScopeUsage

_REQUEST_COLUMNS = (
    "request_id, owner, line_ids, at_us, expires_us, state, reserved_micro, reserved_tokens"
)


class Tx(Protocol):
    """One open transaction. SQL uses ``?`` placeholders; backends translate."""

    for_update: str  # " FOR UPDATE" where row locks exist, "" where the database is locked

    def rows(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]: ...

    def run(self, sql: str, params: Sequence[object] = ()) -> int:
        """Execute; returns the number of rows affected."""
        ...

    def lock_lines(self, line_ids: Sequence[str]) -> None:
        """Serialize with every other writer on these lines until the transaction ends."""
        ...


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
    _check_amounts(cost_micro, tokens)
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
    _check_amounts(cost_micro, tokens)
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


def do_recent_audit(tx: Tx, limit: int) -> list[dict[str, object]]:
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    found = tx.rows("SELECT record FROM rolegate_audit ORDER BY id DESC LIMIT ?", [limit])
    return [dict(json.loads(row[0])) for row in found]


def _check_amounts(cost_micro: int, tokens: int) -> None:
    for value, name in ((cost_micro, "cost_micro"), (tokens, "tokens")):
        # bool is an int subclass and floats would silently round: accept true ints only.
        if type(value) is not int or value < 0:
            raise RequestError(f"{name} must be an int >= 0, got {value!r}")


# -- the work store (see ``base.WorkStore``) -------------------------------------------

#: How often a claim retries when the claim row it conflicted with is gone by the time it
#: locks it: each retry means another run finished or released the stage meanwhile.
_CLAIM_ATTEMPTS = 32


def do_put_decision(tx: Tx, decision_id: str, record_json: str, now_us: int) -> None:
    added = tx.run(
        "INSERT INTO rolegate_decisions (decision_id, at_us, record) VALUES (?, ?, ?)"
        " ON CONFLICT (decision_id) DO NOTHING",
        [decision_id, now_us, record_json],
    )
    if added != 1:
        raise decision_reused(decision_id)


def do_get_decision(tx: Tx, decision_id: str) -> dict[str, object] | None:
    found = tx.rows("SELECT record FROM rolegate_decisions WHERE decision_id = ?", [decision_id])
    return dict(json.loads(found[0][0])) if found else None


def do_claim_stage(
    tx: Tx,
    *,
    task_id: str,
    stage: str,
    role: str,
    model: str,
    request_id: str,
    now_us: int,
    expires_us: int,
) -> None:
    """Claim (task_id, stage) for ``request_id``, in the caller's write transaction.

    The claim row is the stage's mutex. Every transaction that writes the owner row
    (``do_finish_stage``) first holds the claim row (locked FOR UPDATE, and deleted before it
    commits), so locks are always taken in the order claim row -> owner row and two
    transactions on one stage cannot deadlock.

    Here the claim row is secured first: ``INSERT ... ON CONFLICT DO NOTHING`` either
    inserts it (a concurrent inserter of the same key waits for us; we wait for one in
    progress, and for an in-progress delete, before deciding) or finds it committed, and
    then ``SELECT ... FOR UPDATE`` locks it, waiting for its holder and re-reading the
    newest committed version (READ COMMITTED). If it vanished in between (its holder finished
    or released), we start over. Only then is the owner row read: in READ COMMITTED a new
    statement's snapshot is taken after our lock was granted, so it sees every owner write
    committed by an earlier holder of the claim, and no later one can write the owner until
    we commit. Reading the owner first (owner row before claim row) would not do: when no
    owner exists yet there is no row to lock, and a run finishing between that read and our
    insert would leave us a claim on a stage that already has its owner output.

    SQLite runs the same statements under the database write lock (BEGIN IMMEDIATE), where
    nothing changes between them and the loop runs once.
    """
    held: tuple[Any, ...] | None = None
    for _ in range(_CLAIM_ATTEMPTS):
        inserted = tx.run(
            "INSERT INTO rolegate_stage_claims"
            " (task_id, stage, request_id, role, model, expires_us) VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (task_id, stage) DO NOTHING",
            [task_id, stage, request_id, role, model, expires_us],
        )
        if inserted == 1:
            break
        found = tx.rows(
            "SELECT request_id, expires_us FROM rolegate_stage_claims"
            " WHERE task_id = ? AND stage = ?" + tx.for_update,
            [task_id, stage],
        )
        if found:
            held = found[0]
            break
    else:
        raise LedgerError(
            f"stage {stage!r} of task {task_id!r} changed hands {_CLAIM_ATTEMPTS} times while "
            "this run tried to claim it; retry"
        )
    owner = tx.rows(
        "SELECT model, role FROM rolegate_stage_owners WHERE task_id = ? AND stage = ?"
        + tx.for_update,
        [task_id, stage],
    )
    if owner:
        owner_model, owner_role = owner[0]
        # Only the owning role, escalated to a new model, may replace its own output.
        if owner_role != role or owner_model == model or _current_model(tx, task_id, role) != model:
            raise owner_refusal(task_id, stage, owner_model)  # rolls our claim back too
    if held is None:
        return  # inserted
    holder, held_until = held
    if holder != request_id and held_until > now_us:
        raise claimed_refusal(task_id, stage)
    # Ours already (renewed), or expired: its run died or overran; taken over.
    tx.run(
        "UPDATE rolegate_stage_claims SET request_id = ?, role = ?, model = ?, expires_us = ?"
        " WHERE task_id = ? AND stage = ?",
        [request_id, role, model, expires_us, task_id, stage],
    )


def do_finish_stage(
    tx: Tx,
    *,
    task_id: str,
    stage: str,
    request_id: str,
    role: str,
    model: str,
    authority: str,
    contract_valid: bool | None,
    now_us: int,
    output_request_id: str | None = None,
) -> None:
    """The claim row first, then the owner row: the order ``do_claim_stage`` explains.

    The owner row records ``output_request_id`` (the call that produced the output), or the
    claim's own id when none is given."""
    owner_id = output_request_id or request_id
    found = tx.rows(
        "SELECT request_id FROM rolegate_stage_claims WHERE task_id = ? AND stage = ?"
        + tx.for_update,
        [task_id, stage],
    )
    if not found or found[0][0] != request_id:
        raise lost_claim_refusal(task_id, stage, request_id)
    owner = tx.rows(
        "SELECT model, replaced FROM rolegate_stage_owners WHERE task_id = ? AND stage = ?"
        + tx.for_update,
        [task_id, stage],
    )
    if owner:
        earlier, history = owner[0]
        replaced = json.dumps([*json.loads(history), earlier])
        tx.run(
            "UPDATE rolegate_stage_owners SET role = ?, model = ?, request_id = ?,"
            " authority = ?, contract_valid = ?, replaced = ?, at_us = ?"
            " WHERE task_id = ? AND stage = ?",
            [role, model, owner_id, authority, contract_valid, replaced, now_us,
             task_id, stage],
        )  # fmt: skip
    else:
        tx.run(
            "INSERT INTO rolegate_stage_owners (task_id, stage, role, model, request_id,"
            " authority, contract_valid, replaced, at_us) VALUES (?, ?, ?, ?, ?, ?, ?, '[]', ?)",
            [task_id, stage, role, model, owner_id, authority, contract_valid, now_us],
        )
    tx.run(
        "DELETE FROM rolegate_stage_claims WHERE task_id = ? AND stage = ? AND request_id = ?",
        [task_id, stage, request_id],
    )


def do_release_stage(tx: Tx, *, task_id: str, stage: str, request_id: str) -> None:
    tx.run(
        "DELETE FROM rolegate_stage_claims WHERE task_id = ? AND stage = ? AND request_id = ?",
        [task_id, stage, request_id],
    )


def do_record_critique(
    tx: Tx,
    *,
    task_id: str,
    stage: str | None,
    role: str,
    model: str,
    request_id: str,
    contract_valid: bool | None,
    now_us: int,
) -> None:
    tx.run(
        "INSERT INTO rolegate_critiques"
        " (task_id, stage, role, model, request_id, contract_valid, at_us)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        [task_id, stage, role, model, request_id, contract_valid, now_us],
    )


def do_record_escalation(
    tx: Tx,
    *,
    task_id: str,
    role: str,
    step: int,
    provenance_id: str,
    from_model: str | None,
    to_model: str | None,
    fired: list[str],
    policy_hash: str,
    consent: str | None,
    now_us: int,
) -> bool:
    """The primary key decides: of two writers of one (task, role, step), the second's
    INSERT waits for the first to commit, then does nothing."""
    added = tx.run(
        "INSERT INTO rolegate_escalations (task_id, role, step, provenance_id, from_model,"
        " to_model, fired, policy_hash, consent, at_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (task_id, role, step) DO NOTHING",
        [task_id, role, step, provenance_id, from_model, to_model, json.dumps(fired),
         policy_hash, consent, now_us],
    )  # fmt: skip
    return added == 1


def _current_model(tx: Tx, task_id: str, role: str) -> str | None:
    found = tx.rows(
        "SELECT to_model FROM rolegate_escalations WHERE task_id = ? AND role = ?"
        " ORDER BY step DESC LIMIT 1",
        [task_id, role],
    )
    return found[0][0] if found else None


def _verdict(value: object) -> bool | None:
    return None if value is None else bool(value)  # SQLite keeps BOOLEAN as 0/1


def _escalation(row: tuple[Any, ...]) -> dict[str, Any]:
    provenance_id, role, step, from_model, to_model, fired, policy_hash, consent, _ = row
    return {
        "provenance_id": provenance_id,
        "role": role,
        "step": int(step),
        "from_model": from_model,
        "to_model": to_model,
        "fired": list(json.loads(fired)),
        "policy_hash": policy_hash,
        "consent": consent,
    }


def do_task_view(tx: Tx, task_id: str) -> dict[str, Any] | None:
    owners = tx.rows(
        "SELECT stage, role, model, request_id, authority, contract_valid, replaced"
        " FROM rolegate_stage_owners WHERE task_id = ?",
        [task_id],
    )
    escalations = tx.rows(
        "SELECT provenance_id, role, step, from_model, to_model, fired, policy_hash, consent,"
        " at_us FROM rolegate_escalations WHERE task_id = ?",
        [task_id],
    )
    critiques = tx.rows(
        "SELECT role, model, request_id, contract_valid, stage FROM rolegate_critiques"
        " WHERE task_id = ? ORDER BY id",
        [task_id],
    )
    if not (owners or escalations or critiques):
        return None
    # Sorted here, not by ORDER BY: database collations differ; Python's order does not.
    stages = {
        stage: {
            "role": role,
            "model": model,
            "request_id": request_id,
            "authority": authority,
            "contract_valid": _verdict(valid),
            "authoritative": True,
            "replaced": list(json.loads(replaced)),
        }
        for stage, role, model, request_id, authority, valid, replaced in sorted(
            owners, key=lambda row: row[0]
        )
    }
    ordered = sorted(escalations, key=lambda row: (int(row[8]), row[1], int(row[2])))
    return {
        "task_id": task_id,
        "stages": stages,
        "escalations": [_escalation(row) for row in ordered],
        "critiques": [
            {
                "role": role,
                "model": model,
                "request_id": request_id,
                "authority": "sidecar",
                "contract_valid": _verdict(valid),
                "stage": stage,
                "authoritative": False,
            }
            for role, model, request_id, valid, stage in critiques
        ],
    }


class SqlLedger(ABC):
    """The Ledger interface on top of a backend's transactions (see ``base.Ledger``)."""

    description: str

    @abstractmethod
    def _transaction(self, *, write: bool) -> AbstractContextManager[Tx]:
        """A transaction that commits on exit, rolls back on any exception, and turns
        database errors into LedgerError (BUDGET_UNAVAILABLE)."""

    @abstractmethod
    def _prepare_lines(self, line_ids: Sequence[str]) -> None:
        """Run before a reservation's transaction, outside it."""

    @abstractmethod
    def close(self) -> None: ...

    def snapshot(self, policy: HasBudgets, now: datetime) -> BudgetSnapshot:
        lines = unique_lines(policy.budgets)
        with self._transaction(write=False) as tx:
            return BudgetSnapshot(usage(tx, lines, now))

    def reserve(
        self,
        *,
        request_id: str,
        owner: str,
        lines: Sequence[BudgetLine],
        cost_micro: int,
        tokens: int,
        now: datetime,
        lease_s: float,
    ) -> None:
        _check_amounts(cost_micro, tokens)
        self._prepare_lines(sorted({line.id for line in lines}))
        with self._transaction(write=True) as tx:
            do_reserve(
                tx,
                request_id=request_id,
                owner=owner,
                lines=lines,
                cost_micro=cost_micro,
                tokens=tokens,
                now=now,
                lease_s=lease_s,
            )

    def commit(
        self,
        request_id: str,
        *,
        cost_micro: int,
        tokens: int,
        now: datetime,
        audit: Mapping[str, object] | None = None,
    ) -> None:
        _check_amounts(cost_micro, tokens)
        encoded = None if audit is None else audit_json(audit)
        with self._transaction(write=True) as tx:
            if do_commit(tx, request_id, cost_micro=cost_micro, tokens=tokens, now=now):
                do_audit(tx, encoded)  # a repeated commit records nothing twice

    def release(
        self, request_id: str, now: datetime, *, audit: Mapping[str, object] | None = None
    ) -> None:
        encoded = None if audit is None else audit_json(audit)
        with self._transaction(write=True) as tx:
            do_release(tx, request_id, now)
            do_audit(tx, encoded)

    def sweep(self, now: datetime) -> int:
        with self._transaction(write=True) as tx:
            return do_sweep(tx, now)

    def audit(self, record: Mapping[str, object]) -> None:
        encoded = audit_json(record)  # refuse text before taking any lock
        with self._transaction(write=True) as tx:
            do_audit(tx, encoded)

    def recent_audit(self, limit: int) -> list[dict[str, object]]:
        with self._transaction(write=False) as tx:
            return do_recent_audit(tx, limit)

    # -- the work store (see ``base.WorkStore``) ------------------------------------------

    def put_decision(
        self,
        decision_id: str,
        record: Mapping[str, object],
        *,
        now: datetime,
        audit: Mapping[str, object] | None = None,
    ) -> None:
        check_text("decision_id", decision_id)
        encoded = audit_json(record, what="decision")
        trail = None if audit is None else audit_json(audit)
        now_us = to_us(now)
        with self._transaction(write=True) as tx:
            do_put_decision(tx, decision_id, encoded, now_us)
            do_audit(tx, trail)

    def get_decision(self, decision_id: str) -> dict[str, object] | None:
        if not storable(decision_id):
            return None
        with self._transaction(write=False) as tx:
            return do_get_decision(tx, decision_id)

    def claim_stage(
        self,
        *,
        task_id: str,
        stage: str,
        role: str,
        model: str,
        request_id: str,
        now: datetime,
        lease_s: float,
    ) -> None:
        args = check_texts(
            task_id=task_id, stage=stage, role=role, model=model, request_id=request_id
        )
        now_us = to_us(now)
        expires_us = now_us + lease_us(lease_s)
        with self._transaction(write=True) as tx:
            do_claim_stage(tx, **args, now_us=now_us, expires_us=expires_us)

    def finish_stage(
        self,
        *,
        task_id: str,
        stage: str,
        request_id: str,
        role: str,
        model: str,
        authority: str,
        contract_valid: bool | None,
        now: datetime,
        output_request_id: str | None = None,
    ) -> None:
        args = check_texts(
            task_id=task_id,
            stage=stage,
            request_id=request_id,
            role=role,
            model=model,
            authority=authority,
            output_request_id=output_request_id or request_id,
        )
        verdict = check_verdict(contract_valid)
        now_us = to_us(now)
        with self._transaction(write=True) as tx:
            do_finish_stage(tx, **args, contract_valid=verdict, now_us=now_us)

    def release_stage(self, *, task_id: str, stage: str, request_id: str) -> None:
        if not (storable(task_id) and storable(stage) and storable(request_id)):
            return  # it could never have been claimed
        with self._transaction(write=True) as tx:
            do_release_stage(tx, task_id=task_id, stage=stage, request_id=request_id)

    def record_critique(
        self,
        *,
        task_id: str,
        stage: str | None,
        role: str,
        model: str,
        request_id: str,
        contract_valid: bool | None,
        now: datetime,
    ) -> None:
        args = check_texts(task_id=task_id, role=role, model=model, request_id=request_id)
        where = check_optional_text("stage", stage)
        verdict = check_verdict(contract_valid)
        now_us = to_us(now)
        with self._transaction(write=True) as tx:
            do_record_critique(tx, **args, stage=where, contract_valid=verdict, now_us=now_us)

    def record_escalation(
        self,
        *,
        task_id: str,
        role: str,
        step: int,
        provenance_id: str,
        from_model: str | None,
        to_model: str | None,
        fired: Sequence[str],
        policy_hash: str,
        consent: str | None,
        now: datetime,
    ) -> bool:
        args = check_texts(
            task_id=task_id, role=role, provenance_id=provenance_id, policy_hash=policy_hash
        )
        moved_from = check_optional_text("from_model", from_model)
        moved_to = check_optional_text("to_model", to_model)
        answer = check_optional_text("consent", consent)
        signals = check_names("fired", fired)
        rung = check_step(step)
        now_us = to_us(now)
        with self._transaction(write=True) as tx:
            return do_record_escalation(
                tx,
                **args,
                step=rung,
                from_model=moved_from,
                to_model=moved_to,
                fired=signals,
                consent=answer,
                now_us=now_us,
            )

    def escalation_step(self, task_id: str, role: str) -> int:
        if not (storable(task_id) and storable(role)):
            return 0
        with self._transaction(write=False) as tx:
            found = tx.rows(
                "SELECT MAX(step) FROM rolegate_escalations WHERE task_id = ? AND role = ?",
                [task_id, role],
            )
        top = found[0][0] if found else None
        return 0 if top is None else int(top) + 1

    def current_model(self, task_id: str, role: str) -> str | None:
        if not (storable(task_id) and storable(role)):
            return None
        with self._transaction(write=False) as tx:
            return _current_model(tx, task_id, role)

    def was_escalated(self, task_id: str) -> bool:
        if not storable(task_id):
            return False
        with self._transaction(write=False) as tx:
            found = tx.rows(
                "SELECT 1 FROM rolegate_escalations WHERE task_id = ? LIMIT 1", [task_id]
            )
        return bool(found)

    def task_view(self, task_id: str) -> dict[str, Any] | None:
        if not storable(task_id):
            return None
        with self._transaction(write=False) as tx:
            return do_task_view(tx, task_id)
