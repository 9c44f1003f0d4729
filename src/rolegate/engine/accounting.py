"""Budget accounting around one provider call: reserve, then commit or release.

The reservation (worst case: input + max output at the model's prices) is taken
in one short ledger transaction before the call; no transaction is held while
the model runs. Afterwards the real usage is committed (idempotent by request
id); a call with no usage reported is charged the worst case, a broken stream
what it produced, and a call that never started is released.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import anyio

from rolegate.engine.store import PROCESS, Store, stamped
from rolegate.errors import Code, LedgerError
from rolegate.logs import get_logger
from rolegate.plugins.base import ChatResult
from rolegate.policy import Policy
from rolegate.policy.compiled import ModelInfo
from rolegate.topology.residency import LoadReport

log = get_logger()
OWNER = PROCESS  # the reservations' owner is the audit trail's process
COMMIT_ATTEMPTS = 3


@dataclass(slots=True)
class Call:
    """One provider call's bookkeeping (never any text)."""

    request_id: str
    info: ModelInfo
    input_tokens: int
    input_exact: bool
    max_output: int
    reserved: bool = False
    streamed: bool = False  # partial output reached the client
    # Ids and names for the call's audit record (role, job, task, stage, ...), never text.
    context: dict[str, object] = field(default_factory=dict)
    # CODE: sentence for what went wrong after the call was paid for.
    warnings: list[str] = field(default_factory=list)
    load: LoadReport | None = None  # what reaching the model cost (tracked models only)


@dataclass(slots=True)
class Outcome:
    """How a provider call ended, for settling it."""

    result: ChatResult | None = None
    partial: int | None = None  # output tokens produced before a break, if the provider says
    chunks: int = 0
    code: str = "CANCELLED"  # unless the call returns or fails with a code
    elapsed_s: float = 0.0


async def reserve(
    policy: Policy, store: Store, call: Call, *, role: str, job: str | None, lease_s: float
) -> None:
    """Admit the call's worst case against every budget it touches, or raise."""
    ledger = store.ledger
    assert ledger is not None
    now = store.clock()
    if store.sweep_due():
        # Reservations of processes that died (kill -9) stop counting at expiry; sweeping
        # also marks them so, for people reading the ledger.
        await anyio.to_thread.run_sync(lambda: ledger.sweep(now))
    spool = store.spool
    if spool is not None and spool.pending():
        # Spend that could not be committed earlier counts before anything new is admitted;
        # while any of it is still waiting, admission fails closed.
        await anyio.to_thread.run_sync(lambda: spool.drain(ledger))
        if spool.pending():
            raise LedgerError(
                f"spend of {len(spool.pending())} earlier call(s) is waiting in "
                f"{spool.directory} because the ledger {ledger.description} could not take it; "
                "admission fails closed until it does"
            )
    info = call.info
    lines = policy.budgets_touching(job=job, role=role, model=info.id, provider=info.model.provider)
    await anyio.to_thread.run_sync(
        lambda: ledger.reserve(
            request_id=call.request_id,
            owner=OWNER,
            lines=lines,
            cost_micro=info.worst_case_cost_micro(call.input_tokens, call.max_output),
            tokens=call.input_tokens + call.max_output,
            now=now,
            lease_s=lease_s,
        )
    )
    call.reserved = True


async def settle(policy: Policy, store: Store, call: Call, outcome: Outcome) -> None:
    """Commit what was used (real usage, worst case if unreported, partial on a break),
    or release a call that produced nothing; the call's audit record goes in the same
    transaction. The store's observers see the record first, with or without a ledger."""
    record = stamped(
        {
            **call.context,
            "kind": "call",
            "request_id": call.request_id,
            "model": call.info.id,
            "provider": call.info.model.provider,
            "policy_hash": policy.hash,
            "code": outcome.code,
            "ms": round(outcome.elapsed_s * 1000, 3),
        }
    )
    used = _usage(call, outcome)
    if used is None:
        record.update(input_tokens=call.input_tokens, output_tokens=0, cost_micro=0)
        store.observe({**record, "released": True})
    else:
        inp, out = used
        cost = call.info.worst_case_cost_micro(inp, out)
        record.update(input_tokens=inp, output_tokens=out, cost_micro=cost)
        store.observe(record)
    ledger = store.ledger
    if ledger is None or not call.reserved:
        return
    now = store.clock()
    if used is None:
        try:
            await anyio.to_thread.run_sync(
                lambda: ledger.release(call.request_id, now, audit=record)
            )
        except LedgerError:
            # Nothing was spent; the reservation stops counting when its lease expires.
            log.warning("ledger_release_failed", request_id=call.request_id)
        else:
            store.delivered(record)
        return
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        try:
            await anyio.to_thread.run_sync(
                lambda: ledger.commit(
                    call.request_id, cost_micro=cost, tokens=inp + out, now=now, audit=record
                )
            )
        except LedgerError:
            if attempt == COMMIT_ATTEMPTS:
                spool_charge(store, call, cost_micro=cost, tokens=inp + out, now=now, audit=record)
                return
            await anyio.sleep(0.05 * attempt)
        else:
            store.delivered(record)
            return


def _usage(call: Call, outcome: Outcome) -> tuple[int, int] | None:
    """(input, output) tokens to charge; None for a call that produced nothing (released)."""
    result, partial, chunks = outcome.result, outcome.partial, outcome.chunks
    if result is None and partial is None and chunks == 0:
        return None
    if result is not None and result.output_tokens is not None:
        inp = result.input_tokens if result.input_tokens is not None else call.input_tokens
        return inp, result.output_tokens
    if result is not None:
        return call.input_tokens, call.max_output  # no usage reported: worst case
    return call.input_tokens, max(partial or 0, chunks)


def spool_charge(
    store: Store,
    call: Call,
    *,
    cost_micro: int,
    tokens: int,
    now: datetime,
    audit: dict[str, object],
) -> None:
    """The money is spent but the ledger cannot take it: keep it on disk, never lose it."""
    spool = store.spool
    log_fields: dict[str, object] = {
        "request_id": call.request_id,
        "model": call.info.id,
        "cost_micro": cost_micro,
        "tokens": tokens,
    }
    try:
        if spool is not None:
            spool.put(call.request_id, cost_micro=cost_micro, tokens=tokens, at=now, audit=audit)
    except OSError as exc:
        spool = None
        log_fields["error_type"] = type(exc).__name__
    if spool is None:
        # Not even the disk takes it: leave a record a person can reconcile from.
        log.error("spend_not_recorded", **log_fields)
        call.warnings.append(
            f"{Code.BUDGET_UNAVAILABLE}: this call's spend ({cost_micro} micro-USD, {tokens} "
            f"tokens, request {call.request_id}) could not be written to the ledger or the "
            "spool; the server log holds it for reconciliation"
        )
        return
    log.warning("spend_spooled", **log_fields)
    call.warnings.append(
        f"{Code.LEDGER_SPOOLED}: the ledger could not be written after this call; its spend "
        f"({cost_micro} micro-USD, {tokens} tokens) is kept on disk and is committed when "
        "the ledger answers again"
    )
