"""The work store: one owner output per stage, escalations, critiques and decisions.

Semantic tests run on every store (``work``: memory, SQLite, PostgreSQL); the tests about
processes, restarts and races run on both databases (``backend``).
"""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest

from rolegate.errors import Code, LedgerError, RefusedError, RequestError
from rolegate.ledger import Ledger, MemoryWork, WorkStore
from tests.ledger import workers
from tests.ledger.backends import Backend
from tests.ledger.stages import (
    CTX,
    PROCESSES,
    ROLE,
    STAGE,
    TASK,
    claim,
    escalate,
    finish,
    owner_of,
    refused,
    run_processes,
)
from tests.ledger.workers import T0, at

OWNED = "stage 'plan' of task 'task-1' already has its owner output (from {}); a second " \
    "authoritative run needs an escalation first"  # fmt: skip
BUSY = "stage 'plan' of task 'task-1' is being written by another run now (one owner per stage)"


# -- claim / finish / release ------------------------------------------------------------


def test_a_claim_then_finish_makes_the_one_owner_output(work: WorkStore) -> None:
    claim(work, "r1")
    assert work.task_view(TASK) is None  # an open claim is not yet a record of the task
    finish(work, "r1", valid=None)
    assert work.task_view(TASK) == {
        "task_id": TASK,
        "stages": {
            STAGE: {
                "role": ROLE,
                "model": "m-a",
                "request_id": "r1",
                "authority": "owner",
                "contract_valid": None,
                "authoritative": True,
                "replaced": [],
            }
        },
        "escalations": [],
        "critiques": [],
    }
    claim(work, "other-stage", stage="review")  # stages are independent
    claim(work, "other-task", task_id="task-2")  # and so are tasks


def test_a_second_owner_run_without_an_escalation_is_refused(work: WorkStore) -> None:
    claim(work, "r1")
    finish(work, "r1")
    assert refused(claim, work, "r2") == OWNED.format("m-a")
    # Another model does not help either: only an escalation to it does.
    assert refused(claim, work, "r3", model="m-b") == OWNED.format("m-a")
    assert owner_of(work)["request_id"] == "r1"


def test_a_second_claim_while_one_is_open_is_refused(work: WorkStore) -> None:
    claim(work, "r1")
    assert refused(claim, work, "r2", now=at(59)) == BUSY
    assert refused(claim, work, "r3", model="m-b", role="other") == BUSY
    work.release_stage(task_id=TASK, stage=STAGE, request_id="r1")
    claim(work, "r2", now=at(1))
    finish(work, "r2")
    assert owner_of(work)["request_id"] == "r2"


def test_an_expired_claim_is_taken_over_and_its_late_run_is_not_the_owner(
    work: WorkStore,
) -> None:
    claim(work, "r1", lease_s=10)
    assert refused(claim, work, "r2", now=at(9.999999)) == BUSY
    claim(work, "r2", now=at(10), lease_s=10)  # the lease ended: its process died or overran
    message = refused(finish, work, "r1", now=at(11))
    assert "'r1' holds no claim on stage 'plan' of task 'task-1'" in message
    work.release_stage(task_id=TASK, stage=STAGE, request_id="r1")  # not r1's: no-op
    assert refused(claim, work, "r3", now=at(11)) == BUSY
    finish(work, "r2", now=at(12))
    assert owner_of(work)["request_id"] == "r2"
    assert owner_of(work)["replaced"] == []


def test_an_expired_claim_nobody_took_over_still_finishes(work: WorkStore) -> None:
    claim(work, "r1", lease_s=1)
    finish(work, "r1", now=at(30))
    assert owner_of(work)["request_id"] == "r1"


def test_claiming_again_with_the_same_request_renews_the_lease(work: WorkStore) -> None:
    claim(work, "r1", lease_s=10)
    claim(work, "r1", now=at(5), lease_s=10)  # now held until 15
    assert refused(claim, work, "r2", now=at(12)) == BUSY
    claim(work, "r2", now=at(15))


def test_finish_without_a_claim_is_refused_and_writes_nothing(work: WorkStore) -> None:
    message = refused(finish, work, "never")
    assert message.startswith("request 'never' holds no claim on stage 'plan' of task 'task-1'")
    assert work.task_view(TASK) is None
    claim(work, "r1")


def test_an_escalation_allows_one_replacement_each_and_keeps_the_history(
    work: WorkStore,
) -> None:
    claim(work, "r1")
    finish(work, "r1")
    assert escalate(work, 0, "m-b")
    claim(work, "r2", model="m-b", now=at(1))
    finish(work, "r2", model="m-b", valid=False, now=at(2))
    assert owner_of(work) == {
        "role": ROLE,
        "model": "m-b",
        "request_id": "r2",
        "authority": "owner",
        "contract_valid": False,
        "authoritative": True,
        "replaced": ["m-a"],
    }
    # The escalation was used up: the owner output is already from m-b.
    assert refused(claim, work, "r3", model="m-b", now=at(3)) == OWNED.format("m-b")
    assert escalate(work, 1, "m-c", from_model="m-b", now=at(4))
    claim(work, "r4", model="m-c", now=at(5))
    finish(work, "r4", model="m-d", now=at(6))  # a declared fallback of m-c ran
    assert owner_of(work)["model"] == "m-d"
    assert owner_of(work)["replaced"] == ["m-a", "m-b"]


def test_only_the_roles_latest_escalation_opens_a_stage_again(work: WorkStore) -> None:
    claim(work, "r1")
    finish(work, "r1")
    assert escalate(work, 0, "m-b", role="reviewer")  # another role's escalation
    assert refused(claim, work, "r2", model="m-b") == OWNED.format("m-a")
    assert escalate(work, 0, "m-b")
    assert escalate(work, 1, "m-c", from_model="m-b", now=at(1))
    assert refused(claim, work, "r3", model="m-b") == OWNED.format("m-a")  # not the latest
    assert escalate(work, 0, "m-a", task_id="task-2")  # an escalation on another task
    claim(work, "r4", model="m-c")
    finish(work, "r4", model="m-c")


def test_an_escalation_to_the_owners_own_model_opens_nothing(work: WorkStore) -> None:
    claim(work, "r1", model="m-b")
    finish(work, "r1", model="m-b")
    assert escalate(work, 0, "m-b")
    assert refused(claim, work, "r2", model="m-b") == OWNED.format("m-b")


def test_a_refused_claim_leaves_no_claim_behind(work: WorkStore) -> None:
    claim(work, "r1")
    finish(work, "r1")
    refused(claim, work, "r2")  # refused for the owner output, after securing the claim row
    assert escalate(work, 0, "m-b")
    claim(work, "r3", model="m-b")  # not "being written by another run": r2 left nothing


def test_release_drops_only_its_own_claim_and_keeps_the_owner(work: WorkStore) -> None:
    claim(work, "r1")
    finish(work, "r1")
    assert escalate(work, 0, "m-b")
    claim(work, "r2", model="m-b")
    work.release_stage(task_id=TASK, stage=STAGE, request_id="someone-else")
    assert refused(claim, work, "r3", model="m-b") == BUSY
    work.release_stage(task_id=TASK, stage=STAGE, request_id="r2")
    work.release_stage(task_id=TASK, stage=STAGE, request_id="r2")  # twice: no-op
    work.release_stage(task_id="nothing", stage=STAGE, request_id="r2")
    assert owner_of(work) == {
        "role": ROLE,
        "model": "m-a",
        "request_id": "r1",
        "authority": "owner",
        "contract_valid": True,
        "authoritative": True,
        "replaced": [],
    }
    claim(work, "r3", model="m-b")  # the escalation was not used up by a failed run


# -- escalations and critiques -----------------------------------------------------------


def test_escalation_steps_are_recorded_once_each(work: WorkStore) -> None:
    assert work.escalation_step(TASK, ROLE) == 0
    assert work.current_model(TASK, ROLE) is None
    assert not work.was_escalated(TASK)
    assert escalate(work, 0, "m-b", provenance_id="first")
    assert not escalate(work, 0, "m-z", provenance_id="second")  # same rung: nothing written
    assert work.escalation_step(TASK, ROLE) == 1
    assert work.current_model(TASK, ROLE) == "m-b"
    assert work.was_escalated(TASK)
    assert escalate(work, 1, None, from_model="m-b", now=at(1))  # the ladder's top: no move
    assert work.escalation_step(TASK, ROLE) == 2
    assert work.current_model(TASK, ROLE) is None
    assert work.escalation_step(TASK, "reviewer") == 0
    assert work.current_model(TASK, "reviewer") is None
    assert not work.was_escalated("task-2")
    view = work.task_view(TASK)
    assert view is not None
    assert view["stages"] == {}
    assert view["critiques"] == []
    assert view["escalations"] == [
        {
            "provenance_id": "first",
            "role": ROLE,
            "step": 0,
            "from_model": "m-a",
            "to_model": "m-b",
            "fired": ["low_confidence"],
            "policy_hash": "h1",
            "consent": None,
        },
        {
            "provenance_id": f"p-{ROLE}-1",
            "role": ROLE,
            "step": 1,
            "from_model": "m-b",
            "to_model": None,
            "fired": ["low_confidence"],
            "policy_hash": "h1",
            "consent": None,
        },
    ]


def test_escalations_keep_their_consent_and_signals(work: WorkStore) -> None:
    assert work.record_escalation(
        task_id=TASK, role=ROLE, step=0, provenance_id="p", from_model="m-a",
        to_model="m-cloud", fired=("low_confidence", "contract_failed"), policy_hash="h2",
        consent="granted", now=T0,
    )  # fmt: skip
    view = work.task_view(TASK)
    assert view is not None
    (entry,) = view["escalations"]
    assert entry["fired"] == ["low_confidence", "contract_failed"]
    assert entry["consent"] == "granted"
    assert entry["policy_hash"] == "h2"


def test_critiques_are_listed_in_order_and_never_own_a_stage(work: WorkStore) -> None:
    work.record_critique(
        task_id=TASK, stage=STAGE, role="critic", model="m-x", request_id="c1",
        contract_valid=True, now=T0,
    )  # fmt: skip
    work.record_critique(
        task_id=TASK, stage=None, role="critic", model="m-y", request_id="c2",
        contract_valid=None, now=T0,
    )  # fmt: skip
    view = work.task_view(TASK)
    assert view is not None
    assert view["stages"] == {}
    assert view["critiques"] == [
        {
            "role": "critic",
            "model": "m-x",
            "request_id": "c1",
            "authority": "sidecar",
            "contract_valid": True,
            "stage": STAGE,
            "authoritative": False,
        },
        {
            "role": "critic",
            "model": "m-y",
            "request_id": "c2",
            "authority": "sidecar",
            "contract_valid": None,
            "stage": None,
            "authoritative": False,
        },
    ]
    assert not work.was_escalated(TASK)
    claim(work, "r1")  # a critique is no owner output


def test_a_view_lists_stages_by_name_and_escalations_by_time(work: WorkStore) -> None:
    for stage in ("review", "build", "plan"):
        claim(work, f"r-{stage}", stage=stage)
        finish(work, f"r-{stage}", stage=stage)
    assert escalate(work, 0, "m-b", role="zeta", now=at(1))
    assert escalate(work, 0, "m-b", role="alpha", now=at(2))
    assert escalate(work, 1, "m-c", role="alpha", now=at(2))
    view = work.task_view(TASK)
    assert view is not None
    assert list(view["stages"]) == ["build", "plan", "review"]
    assert [(e["role"], e["step"]) for e in view["escalations"]] == [
        ("zeta", 0),
        ("alpha", 0),
        ("alpha", 1),
    ]


def test_an_unknown_task_has_no_view(work: WorkStore) -> None:
    assert work.task_view("nobody") is None


# -- decisions ---------------------------------------------------------------------------

DECISION = {
    "outcome": "route",
    "code": "ROUTED",
    "role": "planner",
    "model": "m-a",
    "policy": {"name": "p", "revision": "1", "hash": "h1"},
    "tokens": {"input_tokens": 12, "method": "exact"},
    "reasons": ["fits"],
    "premium": False,
    "max_output_tokens": None,
}


def test_a_decision_round_trips_and_its_id_is_used_once(work: WorkStore) -> None:
    assert work.get_decision("dec_1") is None
    work.put_decision("dec_1", DECISION, now=T0)
    assert work.get_decision("dec_1") == DECISION
    found = work.get_decision("dec_1")
    assert found is not None
    found["model"] = "changed"  # a copy: the store keeps its own
    assert work.get_decision("dec_1") == DECISION
    with pytest.raises(RequestError) as caught:
        work.put_decision("dec_1", {**DECISION, "model": "m-b"}, now=T0)
    assert caught.value.code == Code.INVALID_ARGUMENT
    assert work.get_decision("dec_1") == DECISION


def test_a_decision_or_its_audit_never_carries_text(work: WorkStore) -> None:
    with pytest.raises(ValueError, match=r"decision record\.tokens has key 'prompt'"):
        work.put_decision("dec_1", {**DECISION, "tokens": {"prompt": "secret"}}, now=T0)
    with pytest.raises(ValueError, match="audit record has key 'completion'"):
        work.put_decision("dec_1", DECISION, now=T0, audit={"completion": "secret"})
    assert work.get_decision("dec_1") is None  # neither was stored
    work.put_decision("dec_1", DECISION, now=T0)


def test_a_decision_and_its_audit_are_one_write(ledger: Ledger) -> None:
    audit = {"kind": "decision", "decision_id": "dec_1", "code": "ROUTED"}
    ledger.put_decision("dec_1", DECISION, now=T0, audit=audit)
    assert ledger.recent_audit(5) == [audit]
    with pytest.raises(RequestError):
        ledger.put_decision("dec_1", DECISION, now=T0, audit={**audit, "code": "AGAIN"})
    assert ledger.recent_audit(5) == [audit]  # the refused decision's audit rolled back


# -- arguments ---------------------------------------------------------------------------

ODD = [
    "",
    "x" * 10_000,
    "ünïcødé ✓ 𝔘 日本",
    'it\'s "quoted"; DROP TABLE rolegate_stage_owners; --',
    "? %s %(x)s {} \\",
    "\n\t\r",
    "\u2028",
]


@pytest.mark.parametrize("odd", ODD, ids=range(len(ODD)))
def test_any_storable_string_round_trips(work: WorkStore, odd: str) -> None:
    claim(work, odd, task_id=odd, stage=odd, model=odd, role=odd)
    assert refused(claim, work, odd + "2", task_id=odd, stage=odd, model=odd, role=odd) == (
        f"stage {odd!r} of task {odd!r} is being written by another run now (one owner per stage)"
    )
    finish(work, odd, task_id=odd, stage=odd, model=odd, role=odd)
    assert escalate(work, 0, odd, role=odd, from_model=odd, provenance_id=odd, task_id=odd)
    assert work.current_model(odd, odd) == odd
    assert work.escalation_step(odd, odd) == 1
    work.record_critique(
        task_id=odd, stage=odd, role=odd, model=odd, request_id=odd, contract_valid=None, now=T0
    )
    view = work.task_view(odd)
    assert view is not None
    assert view["stages"][odd]["model"] == odd
    assert view["escalations"][0]["to_model"] == odd
    assert view["critiques"][0]["request_id"] == odd
    work.put_decision(odd, {"model": odd}, now=T0)
    assert work.get_decision(odd) == {"model": odd}


@pytest.mark.parametrize("bad", ["nul\x00inside", "lone \ud800 surrogate"], ids=["nul", "surr"])
def test_an_unstorable_string_is_refused_by_writers_and_unknown_to_readers(
    work: WorkStore, bad: str
) -> None:
    writers: list[Any] = [
        lambda: claim(work, "r", task_id=bad),
        lambda: claim(work, bad),
        lambda: claim(work, "r", model=bad),
        lambda: finish(work, "r", stage=bad),
        lambda: escalate(work, 0, bad),
        lambda: escalate(work, 0, "m", provenance_id=bad),
        lambda: work.put_decision(bad, DECISION, now=T0),
        lambda: work.record_critique(
            task_id=TASK,
            stage=bad,
            role="c",
            model="m",
            request_id="c",
            contract_valid=None,
            now=T0,
        ),
    ]
    for write in writers:
        with pytest.raises(RequestError) as caught:
            write()
        assert caught.value.code == Code.INVALID_ARGUMENT
        assert "without NUL characters or unpaired surrogates" in caught.value.message
    assert work.get_decision(bad) is None
    assert work.task_view(bad) is None
    assert work.escalation_step(bad, ROLE) == 0
    assert work.current_model(TASK, bad) is None
    assert not work.was_escalated(bad)
    work.release_stage(task_id=bad, stage=STAGE, request_id="r")
    assert work.task_view(TASK) is None  # nothing half-written


def test_malformed_arguments_are_refused(work: WorkStore) -> None:
    with pytest.raises(RequestError, match="step must be an int >= 0"):
        escalate(work, -1, "m-b")
    with pytest.raises(RequestError, match="step must be an int >= 0"):
        escalate(work, True, "m-b")
    with pytest.raises(RequestError, match="fired must be a list of strings"):
        work.record_escalation(
            task_id=TASK, role=ROLE, step=0, provenance_id="p", from_model=None, to_model="m",
            fired="low_confidence", policy_hash="h", consent=None, now=T0,
        )  # fmt: skip
    claim(work, "r1")
    with pytest.raises(RequestError, match="contract_valid must be True, False or None"):
        finish(work, "r1", valid="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lease_s must be > 0"):
        claim(work, "r2", lease_s=0)
    with pytest.raises(ValueError, match="timezone-aware"):
        claim(work, "r2", now=T0.replace(tzinfo=None))
    assert not work.was_escalated(TASK)
    finish(work, "r1")  # the claim survived the refused calls


# -- the in-memory store -----------------------------------------------------------------


def test_memory_work_keeps_a_bounded_number_of_tasks_and_decisions() -> None:
    store = MemoryWork(max_tasks=3, max_decisions=2)
    for k in range(3):
        claim(store, f"r{k}", task_id=f"t{k}")
        finish(store, f"r{k}", task_id=f"t{k}")
    assert escalate(store, 0, "m-b", task_id="t0")  # t0 written again: now the newest
    claim(store, "r3", task_id="t3")
    finish(store, "r3", task_id="t3")  # a fourth task: the least recently written goes
    assert store.task_view("t1") is None
    assert {t for t in ("t0", "t2", "t3") if store.task_view(t) is not None} == {"t0", "t2", "t3"}
    for k in range(3):
        store.put_decision(f"d{k}", {"k": k}, now=T0)
    assert store.get_decision("d0") is None
    assert store.get_decision("d2") == {"k": 2}
    with pytest.raises(ValueError, match=">= 1"):
        MemoryWork(max_tasks=0)


def test_memory_work_gives_a_stage_to_one_of_many_threads() -> None:
    store = MemoryWork()
    barrier = threading.Barrier(16)
    outcomes: list[str] = []

    def run(k: int) -> None:
        barrier.wait(timeout=30)
        try:
            claim(store, f"r{k}")
            outcomes.append("claimed")
        except RefusedError as exc:
            outcomes.append(exc.code)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert Counter(outcomes) == {"claimed": 1, Code.CONSENSUS_FORBIDDEN: 15}


def test_both_stores_are_work_stores(ledger: Ledger) -> None:
    assert isinstance(ledger, WorkStore)
    assert isinstance(MemoryWork(), WorkStore)
    assert not isinstance(MemoryWork(), Ledger)


# -- across processes and restarts (both databases) --------------------------------------


def test_eight_processes_at_a_barrier_one_claims_the_stage(
    backend: Backend, ledger: Ledger
) -> None:
    barrier, results = CTX.Barrier(PROCESSES), CTX.Queue()
    reports = run_processes(
        workers.claim_at_barrier,
        [(backend.url, w, TASK, STAGE, barrier, results) for w in range(PROCESSES)],
        results,
    )
    winners = [rid for rid, outcome in reports if outcome == "claimed"]
    losers = [outcome for _, outcome in reports if outcome != "claimed"]
    assert len(winners) == 1
    assert losers == [f"{Code.CONSENSUS_FORBIDDEN}|{BUSY}"] * (PROCESSES - 1)
    # The one claim recorded is the winner's: only it can finish.
    for rid, _ in reports:
        if rid != winners[0]:
            refused(finish, ledger, rid)
    finish(ledger, winners[0])
    assert owner_of(ledger)["request_id"] == winners[0]


def test_claims_racing_finishes_never_make_a_second_owner(backend: Backend, ledger: Ledger) -> None:
    """Every worker claims then finishes task after task: a claim made while another run
    finishes the same stage must see that run's owner output, never a free stage."""
    tasks = 40
    barrier, results = CTX.Barrier(PROCESSES), CTX.Queue()
    reports = run_processes(
        workers.claim_and_finish_many,
        [(backend.url, w, tasks, STAGE, barrier, results) for w in range(PROCESSES)],
        results,
    )
    assert [e for _, _, errors in reports for e in errors] == []
    owned = Counter(task for _, tasks_owned, _ in reports for task in tasks_owned)
    assert owned == dict.fromkeys((f"task-{k}" for k in range(tasks)), 1)
    for k in range(tasks):
        assert owner_of(ledger, task_id=f"task-{k}")["replaced"] == []


def test_eight_processes_at_a_barrier_record_one_escalation_step(
    backend: Backend, ledger: Ledger
) -> None:
    barrier, results = CTX.Barrier(PROCESSES), CTX.Queue()
    reports = run_processes(
        workers.escalate_at_barrier,
        [(backend.url, w, TASK, barrier, results) for w in range(PROCESSES)],
        results,
    )
    assert sorted(str(won) for _, won in reports) == ["False"] * (PROCESSES - 1) + ["True"]
    (winner,) = [pid for pid, won in reports if won is True]
    view = ledger.task_view(TASK)
    assert view is not None
    assert [e["provenance_id"] for e in view["escalations"]] == [winner]
    assert ledger.current_model(TASK, ROLE) == f"m-{winner.removeprefix('esc-')}"
    assert ledger.escalation_step(TASK, ROLE) == 1


def test_two_instances_race_to_record_one_escalation_step(backend: Backend) -> None:
    first, second = backend.open(), backend.open()
    try:
        assert escalate(first, 0, "m-b", provenance_id="one")
        assert not escalate(second, 0, "m-c", provenance_id="two")
        assert second.current_model(TASK, ROLE) == "m-b"
    finally:
        first.close()
        second.close()


def test_ownership_and_escalations_survive_a_restart(backend: Backend) -> None:
    before = backend.open()
    claim(before, "r1")
    finish(before, "r1")
    assert escalate(before, 0, "m-b")
    claim(before, "r2", model="m-b", lease_s=3600)  # its process is about to "die"
    before.close()

    after = backend.open()
    try:
        assert owner_of(after)["request_id"] == "r1"
        assert after.escalation_step(TASK, ROLE) == 1
        assert after.current_model(TASK, ROLE) == "m-b"
        assert refused(claim, after, "r3", model="m-b") == BUSY  # the open claim survived too
        claim(after, "r4", model="m-b", now=at(3600))  # ... until its lease ran out
        finish(after, "r4", model="m-b", now=at(3601))
        assert owner_of(after)["replaced"] == ["m-a"]
        assert refused(claim, after, "r5", model="m-b", now=at(3602)) == OWNED.format("m-b")
    finally:
        after.close()


def test_a_decision_is_usable_from_another_instance_and_another_process(
    backend: Backend, ledger: Ledger
) -> None:
    ledger.put_decision("dec_shared", DECISION, now=T0)
    other = backend.open()
    try:
        assert other.get_decision("dec_shared") == DECISION
    finally:
        other.close()
    results = CTX.Queue()
    assert run_processes(
        workers.read_decision, [(backend.url, "dec_shared", results)], results
    ) == [DECISION]


def test_an_unreachable_ledger_fails_the_work_store_closed(
    backend: Backend, ledger: Ledger
) -> None:
    claim(ledger, "r1")
    with backend.unreachable():
        for call in (
            lambda: claim(ledger, "r2", task_id="task-2"),
            lambda: finish(ledger, "r1"),
            lambda: ledger.task_view(TASK),
            lambda: ledger.get_decision("d"),
        ):
            with pytest.raises(LedgerError) as caught:
                call()
            assert caught.value.code == Code.BUDGET_UNAVAILABLE
    finish(ledger, "r1")
    assert owner_of(ledger)["request_id"] == "r1"


def test_another_role_escalating_itself_cannot_take_over_a_stage(work: Any) -> None:
    now = datetime.now(UTC)
    work.claim_stage(task_id="t", stage="notes", role="librarian", model="m1",
                     request_id="r1", now=now, lease_s=60)  # fmt: skip
    work.finish_stage(task_id="t", stage="notes", request_id="r1", role="librarian",
                      model="m1", authority="owner", contract_valid=None, now=now)  # fmt: skip
    assert work.record_escalation(task_id="t", role="architect", step=0, provenance_id="e1",
                                  from_model="m2", to_model="m3", fired=["scope_large"],
                                  policy_hash="h", consent=None, now=now)  # fmt: skip
    with pytest.raises(RefusedError) as refused:
        work.claim_stage(task_id="t", stage="notes", role="architect", model="m3",
                         request_id="r2", now=now, lease_s=60)  # fmt: skip
    assert refused.value.code == "CONSENSUS_FORBIDDEN"
    assert work.task_view("t")["stages"]["notes"]["role"] == "librarian"
