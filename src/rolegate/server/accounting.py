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
from typing import TYPE_CHECKING

import anyio

from rolegate.errors import LedgerError
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
    # Ids and names for the call's audit record (role, job, task, stage, ...), never text.
    context: dict[str, object] = field(default_factory=dict)


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
        await anyio.to_thread.run_sync(lambda: ledger.release(call.request_id, now, audit=record))
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
                # The money is spent: leave a record a person can reconcile from.
                log.exception(
                    "ledger_commit_failed",
                    request_id=call.request_id,
                    model=call.info.id,
                    cost_micro=cost,
                    tokens=inp + out,
                )
                raise
            await anyio.sleep(0.05 * attempt)
        else:
            return
