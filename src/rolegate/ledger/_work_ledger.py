"""The work store half of ``SqlLedger`` (see ``base.WorkStore``): argument checks in the
caller's thread, then one read or one durable write (``_read``/``_write``) per call."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

from rolegate.ledger._budget_sql import do_audit
from rolegate.ledger._tx import Tx
from rolegate.ledger._work_sql import (
    current_model,
    do_claim_stage,
    do_finish_stage,
    do_get_decision,
    do_put_decision,
    do_record_critique,
    do_record_escalation,
    do_release_stage,
    do_task_view,
)
from rolegate.ledger.checks import (
    audit_json,
    check_names,
    check_optional_text,
    check_step,
    check_text,
    check_texts,
    check_verdict,
    storable,
)
from rolegate.ledger.records import lease_us, to_us

T = TypeVar("T")


class SqlWorkStore(ABC):
    """``WorkStore`` over ``_read`` and ``_write`` (which ``SqlLedger`` provides)."""

    @abstractmethod
    def _write(self, work: Callable[[Tx], T], *, locks_rows: bool = True) -> T:
        """``work`` in a durable write transaction; ``locks_rows=False`` for writes that
        lock nothing but the new keys they insert (groupable on every backend)."""

    @abstractmethod
    def _read(self, work: Callable[[Tx], T]) -> T: ...

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

        def work(tx: Tx) -> None:
            do_put_decision(tx, decision_id, encoded, now_us)
            do_audit(tx, trail)

        self._write(work, locks_rows=False)

    def get_decision(self, decision_id: str) -> dict[str, object] | None:
        if not storable(decision_id):
            return None
        return self._read(lambda tx: do_get_decision(tx, decision_id))

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
        self._write(lambda tx: do_claim_stage(tx, **args, now_us=now_us, expires_us=expires_us))

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
        self._write(lambda tx: do_finish_stage(tx, **args, contract_valid=verdict, now_us=now_us))

    def release_stage(self, *, task_id: str, stage: str, request_id: str) -> None:
        if not (storable(task_id) and storable(stage) and storable(request_id)):
            return  # it could never have been claimed
        self._write(
            lambda tx: do_release_stage(tx, task_id=task_id, stage=stage, request_id=request_id)
        )

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
        self._write(
            lambda tx: do_record_critique(
                tx, **args, stage=where, contract_valid=verdict, now_us=now_us
            ),
            locks_rows=False,  # an append: its key is new
        )

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
        audit: Mapping[str, object] | None = None,
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
        trail = None if audit is None else audit_json(audit)

        def work(tx: Tx) -> bool:
            added = do_record_escalation(
                tx, **args, step=rung, from_model=moved_from, to_model=moved_to,
                fired=signals, consent=answer, now_us=now_us,
            )  # fmt: skip
            if added:
                do_audit(tx, trail)  # a step another call recorded first is not audited here
            return added

        # Row-locking: two writers of one (task, role, step) wait for each other's insert.
        return self._write(work)

    def escalation_step(self, task_id: str, role: str) -> int:
        if not (storable(task_id) and storable(role)):
            return 0
        found = self._read(
            lambda tx: tx.rows(
                "SELECT MAX(step) FROM rolegate_escalations WHERE task_id = ? AND role = ?",
                [task_id, role],
            )
        )
        top = found[0][0] if found else None
        return 0 if top is None else int(top) + 1

    def current_model(self, task_id: str, role: str) -> str | None:
        if not (storable(task_id) and storable(role)):
            return None
        return self._read(lambda tx: current_model(tx, task_id, role))

    def was_escalated(self, task_id: str) -> bool:
        if not storable(task_id):
            return False
        found = self._read(
            lambda tx: tx.rows(
                "SELECT 1 FROM rolegate_escalations WHERE task_id = ? LIMIT 1", [task_id]
            )
        )
        return bool(found)

    def task_view(self, task_id: str) -> dict[str, Any] | None:
        if not storable(task_id):
            return None
        return self._read(lambda tx: do_task_view(tx, task_id))
