"""Running a suite: every case on every candidate model, through the engine's run path.

Each case is one ``run_role`` with the model pinned (``RunRequest.model``): budgets,
local_only, allowlists, context limits and the audit apply as for any call, and nothing
falls back, so a result is always the named model's. A refusal (a premium model no job
allows, a spent budget) is recorded as ``refused`` and a failed call as ``error``, with
their codes; neither counts as quality evidence. Each result is stored as soon as it is
judged, so an interrupted run keeps what it measured. No prompt or output text is stored.
"""

from __future__ import annotations

import dataclasses
import functools
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import anyio

from rolegate.engine.core import PolicyEngine
from rolegate.engine.requests import RunRequest
from rolegate.engine.store import PROCESS
from rolegate.errors import Code, RefusedError, RequestError, RolegateError
from rolegate.evals.suites import Case, Suite
from rolegate.ledger.base import Ledger
from rolegate.ledger.quality import EvalResult, EvalRun
from rolegate.plugins.base import CheckContext, Checker


@dataclass(frozen=True, slots=True)
class Judged:
    """One case on one model, as stored (plus the checker's reason, shown not stored)."""

    row: EvalResult
    reason: str = ""


@dataclass(slots=True)
class EvalOutcome:
    run: EvalRun
    results: list[Judged] = field(default_factory=list)


Progress = Callable[[int, int, Judged], None]


def candidate_models(engine: PolicyEngine, role: str, models: Sequence[str] | None) -> list[str]:
    """The models to measure: those named, else the role's own model and its candidates."""
    doc = engine.policy.doc
    if role not in doc.roles:
        raise RequestError(
            f"unknown role {role!r}; the policy defines {sorted(doc.roles)}",
            code=Code.UNKNOWN_ROLE,
        )
    chosen = list(models) if models else [doc.roles[role].model, *doc.roles[role].candidates]
    unknown = [m for m in chosen if m not in doc.models]
    if unknown:
        raise RequestError(
            f"unknown model(s) {unknown}; the policy defines {sorted(doc.models)}",
            code=Code.UNKNOWN_MODEL,
        )
    return list(dict.fromkeys(chosen))


async def run_suite(
    engine: PolicyEngine,
    ledger: Ledger,
    suite: Suite,
    checkers: Mapping[str, Checker],
    *,
    role: str,
    models: Sequence[str],
    job: str | None = None,
    run_id: str | None = None,
    progress: Progress | None = None,
) -> EvalOutcome:
    """Run every case of ``suite`` on each of ``models`` (one model after another, cases in
    order), store each result, and return them all."""
    clock = engine.store.clock
    run = EvalRun(
        run_id=run_id or "eval_" + uuid.uuid4().hex[:16],
        suite=suite.name,
        suite_hash=suite.hash,
        policy_hash=engine.policy.hash,
        role=role,
        job=job,
        models=tuple(models),
        cases=len(suite.cases),
        started_us=_us(clock().timestamp()),
        owner=PROCESS,
    )
    await anyio.to_thread.run_sync(lambda: ledger.put_eval_run(run))
    outcome = EvalOutcome(run)
    total = len(models) * len(suite.cases)
    try:
        for model in models:
            for case in suite.cases:
                judged = await _one(engine, suite, case, checkers, run, model)
                await anyio.to_thread.run_sync(ledger.put_eval_results, [judged.row])
                outcome.results.append(judged)
                if progress is not None:
                    progress(len(outcome.results), total, judged)
    finally:
        with anyio.CancelScope(shield=True):
            done = _us(clock().timestamp())
            await anyio.to_thread.run_sync(lambda: ledger.finish_eval_run(run.run_id, done))
    engine.quality.invalidate()
    outcome.run = dataclasses.replace(run, finished_us=done)  # as stored
    return outcome


async def _one(
    engine: PolicyEngine,
    suite: Suite,
    case: Case,
    checkers: Mapping[str, Checker],
    run: EvalRun,
    model: str,
) -> Judged:
    request = RunRequest(
        role=run.role,
        prompt=case.prompt,
        messages=case.messages,
        system=case.system or suite.system,
        job=run.job,
        max_output_tokens=case.max_output_tokens or suite.max_output_tokens,
        model=model,
    )
    # What every row of this case on this model says, judged or not.
    result_row = functools.partial(
        EvalResult, suite=suite.name, case_id=case.id, model=model, run_id=run.run_id,
        source="eval",
    )  # fmt: skip
    started = time.perf_counter()
    try:
        result = await engine.run_role(request)
    except RolegateError as exc:
        ms = round((time.perf_counter() - started) * 1000, 3)
        row = result_row(
            outcome="refused" if isinstance(exc, RefusedError) else "error",
            at_us=_now(engine),
            latency_ms=ms,
            code=str(exc.code),
        )
        return Judged(row, exc.message)
    spec = case.check_spec()
    context = CheckContext(case_id=case.id, model=model, contracts=engine.policy.doc.contracts)
    verdict = await checkers[case.check_type].check(result.output, spec, context)
    row = result_row(
        outcome="pass" if verdict.passed else "fail",
        at_us=_now(engine),
        score=verdict.score,
        latency_ms=result.latency_ms,
        ttft_ms=result.ttft_ms,
        input_tokens=result.usage.input_tokens,
        output_tokens=result.usage.output_tokens,
        cost_micro=result.cost_micro,
    )
    return Judged(row, verdict.reason)


def _now(engine: PolicyEngine) -> int:
    return _us(engine.store.clock().timestamp())


def _us(seconds: float) -> int:
    return int(seconds * 1_000_000)
