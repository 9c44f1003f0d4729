"""Budget accounting around one provider call: reserve, then commit or release.

The reservation (worst case: input + max output at the model's prices) is taken
in one short ledger transaction before the call; no transaction is held while
the model runs. Afterwards the real usage is committed (idempotent by request
id); a call with no usage reported is charged the worst case, a broken stream
what it produced, and a call that never started is released.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

import anyio

from rolegate.errors import Code, LedgerError
from rolegate.ledger.base import default_owner
from rolegate.plugins.base import ChatResult
from rolegate.policy.compiled import ModelInfo
from rolegate.server.logs import get_logger

if TYPE_CHECKING:
    from rolegate.server.service import Rolegate

log = get_logger()
OWNER = default_owner()
SWEEP_EVERY_S = 60.0
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


async def reserve(
    service: Rolegate, call: Call, *, role: str, job: str | None, lease_s: float
) -> None:
    """Admit the call's worst case against every budget it touches, or raise."""
    ledger = service.ledger
    assert ledger is not None
    now = service.clock()
    if time.monotonic() - service.last_sweep > SWEEP_EVERY_S:
        # Reservations of processes that died (kill -9) stop counting at expiry; sweeping
        # also marks them so, for people reading the ledger.
        service.last_sweep = time.monotonic()
        await anyio.to_thread.run_sync(lambda: ledger.sweep(now))
    spool = service.spool
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
    lines = service.policy.budgets_touching(
        job=job, role=role, model=info.id, provider=info.model.provider
    )
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


async def settle(
    service: Rolegate,
    call: Call,
    result: ChatResult | None,
    partial: int | None,
    chunks: int,
    *,
    code: str,
    elapsed_s: float,
) -> None:
    """Commit what was used (real usage, worst case if unreported, partial on a break),
    or release a call that produced nothing; the call's audit record goes in the same
    transaction."""
    ledger = service.ledger
    if ledger is None or not call.reserved:
        return
    now = service.clock()
    record = {
        **call.context,
        "kind": "call",
        "request_id": call.request_id,
        "model": call.info.id,
        "provider": call.info.model.provider,
        "policy_hash": service.policy.hash,
        "code": code,
        "ms": round(elapsed_s * 1000, 3),
    }
    if result is None and partial is None and chunks == 0:
        record.update(input_tokens=call.input_tokens, output_tokens=0, cost_micro=0)
        try:
            await anyio.to_thread.run_sync(
                lambda: ledger.release(call.request_id, now, audit=record)
            )
        except LedgerError:
            # Nothing was spent; the reservation stops counting when its lease expires.
            log.warning("ledger_release_failed", request_id=call.request_id)
        return
    if result is not None and result.output_tokens is not None:
        inp = result.input_tokens if result.input_tokens is not None else call.input_tokens
        out = result.output_tokens
    elif result is not None:
        inp, out = call.input_tokens, call.max_output  # no usage reported: worst case
    else:
        inp, out = call.input_tokens, max(partial or 0, chunks)
    cost = call.info.worst_case_cost_micro(inp, out)
    record.update(input_tokens=inp, output_tokens=out, cost_micro=cost)
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        try:
            await anyio.to_thread.run_sync(
                lambda: ledger.commit(
                    call.request_id, cost_micro=cost, tokens=inp + out, now=now, audit=record
                )
            )
        except LedgerError:
            if attempt == COMMIT_ATTEMPTS:
                spool_charge(
                    service, call, cost_micro=cost, tokens=inp + out, now=now, audit=record
                )
                return
            await anyio.sleep(0.05 * attempt)
        else:
            return


def spool_charge(
    service: Rolegate,
    call: Call,
    *,
    cost_micro: int,
    tokens: int,
    now: datetime,
    audit: dict[str, object],
) -> None:
    """The money is spent but the ledger cannot take it: keep it on disk, never lose it."""
    spool = service.spool
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
