"""The work store's rules as SQL (see ``base.WorkStore``), shared by both backends.

Each function runs inside one transaction the backend opened (``Tx``).

Stage ownership. The claim row is the stage's mutex. Every transaction that writes the
owner row (``do_finish_stage``) first holds the claim row (locked FOR UPDATE, and deleted
before it commits), so locks are always taken in the order claim row -> owner row and two
transactions on one stage cannot deadlock.

``do_claim_stage`` secures the claim row first: ``INSERT ... ON CONFLICT DO NOTHING``
either inserts it (a concurrent inserter of the same key waits for us; we wait for one in
progress, and for an in-progress delete, before deciding) or finds it committed, and then
``SELECT ... FOR UPDATE`` locks it, waiting for its holder and re-reading the newest
committed version (READ COMMITTED). If it vanished in between (its holder finished or
released), we start over. Only then is the owner row read: in READ COMMITTED a new
statement's snapshot is taken after our lock was granted, so it sees every owner write
committed by an earlier holder of the claim, and no later one can write the owner until we
commit. Reading the owner first (owner row before claim row) would not do: when no owner
exists yet there is no row to lock, and a run finishing between that read and our insert
would leave us a claim on a stage that already has its owner output.

SQLite runs the same statements under the database write lock (BEGIN IMMEDIATE), where
nothing changes between them and the claim loop runs once.
"""

from __future__ import annotations

import json
from typing import Any

from rolegate.errors import LedgerError
from rolegate.ledger._tx import Tx
from rolegate.ledger.checks import (
    claimed_refusal,
    decision_reused,
    lost_claim_refusal,
    owner_refusal,
)

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
    """Claim (task_id, stage) for ``request_id``, in the caller's write transaction: the
    claim row first, then the owner row (see the module docstring for why that order)."""
    held = _secure_claim_row(
        tx, task_id=task_id, stage=stage, request_id=request_id, role=role, model=model,
        expires_us=expires_us,
    )  # fmt: skip
    owner = tx.rows(
        "SELECT model, role FROM rolegate_stage_owners WHERE task_id = ? AND stage = ?"
        + tx.for_update,
        [task_id, stage],
    )
    if owner:
        owner_model, owner_role = owner[0]
        # Only the owning role, escalated to a new model, may replace its own output.
        if owner_role != role or owner_model == model or current_model(tx, task_id, role) != model:
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


def _secure_claim_row(
    tx: Tx,
    *,
    task_id: str,
    stage: str,
    request_id: str,
    role: str,
    model: str,
    expires_us: int,
) -> tuple[Any, ...] | None:
    """Insert the claim row (None), or lock the one found: (holder, expires_us)."""
    for _ in range(_CLAIM_ATTEMPTS):
        inserted = tx.run(
            "INSERT INTO rolegate_stage_claims"
            " (task_id, stage, request_id, role, model, expires_us) VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (task_id, stage) DO NOTHING",
            [task_id, stage, request_id, role, model, expires_us],
        )
        if inserted == 1:
            return None
        found = tx.rows(
            "SELECT request_id, expires_us FROM rolegate_stage_claims"
            " WHERE task_id = ? AND stage = ?" + tx.for_update,
            [task_id, stage],
        )
        if found:
            return tuple(found[0])
    raise LedgerError(
        f"stage {stage!r} of task {task_id!r} changed hands {_CLAIM_ATTEMPTS} times while "
        "this run tried to claim it; retry"
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
    """The claim row first, then the owner row (the order the module docstring explains).

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


def current_model(tx: Tx, task_id: str, role: str) -> str | None:
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
    ordered = sorted(escalations, key=lambda row: (int(row[8]), row[1], int(row[2])))
    return {
        "task_id": task_id,
        "stages": {row[0]: _stage(row) for row in sorted(owners, key=lambda row: row[0])},
        "escalations": [_escalation(row) for row in ordered],
        "critiques": [_critique(row) for row in critiques],
    }


def _stage(row: tuple[Any, ...]) -> dict[str, Any]:
    _, role, model, request_id, authority, valid, replaced = row
    return {
        "role": role,
        "model": model,
        "request_id": request_id,
        "authority": authority,
        "contract_valid": _verdict(valid),
        "authoritative": True,
        "replaced": list(json.loads(replaced)),
    }


def _critique(row: tuple[Any, ...]) -> dict[str, Any]:
    role, model, request_id, valid, stage = row
    return {
        "role": role,
        "model": model,
        "request_id": request_id,
        "authority": "sidecar",
        "contract_valid": _verdict(valid),
        "stage": stage,
        "authoritative": False,
    }
