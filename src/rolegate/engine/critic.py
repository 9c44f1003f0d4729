"""The critic sidecar, as pipeline.critic says: never, always, or only on escalation.

- never: no critic runs; asking for one is refused (CRITIC_NOT_ALLOWED).
- on_escalation: a critic runs only as a second opinion on a task that was escalated; the
  server runs the stage's critic itself after an escalated owner's output.
- always: the server runs the stage's critic after every owner output of that stage.

A critique is non-authoritative: it is returned beside the owner output and recorded on the
task; it never replaces or rewrites the owner output.
"""

from __future__ import annotations

from rolegate.engine.results import Critique, RunResult
from rolegate.engine.store import Store
from rolegate.errors import Code, RefusedError
from rolegate.policy import Policy


async def check_critic_allowed(
    policy: Policy, store: Store, role: str, task_id: str | None
) -> None:
    """Refuse a sidecar run that the pipeline's critic mode does not allow."""
    if policy.doc.roles[role].authority != "sidecar":
        return
    mode = policy.doc.pipeline.critic
    if mode == "never":
        raise RefusedError(
            f"{role!r} is a critic and this policy's pipeline.critic is 'never': no critic runs",
            code=Code.CRITIC_NOT_ALLOWED,
        )
    if mode == "on_escalation" and not (task_id and await store.was_escalated(task_id)):
        raise RefusedError(
            f"{role!r} is a critic and this policy runs critics only as a second opinion after "
            "an escalation (pipeline.critic: on_escalation); escalate the task first, with "
            "its task_id",
            code=Code.CRITIC_NOT_ALLOWED,
        )


def automatic_critic(
    policy: Policy, role: str, stage: str | None, *, escalated: bool
) -> str | None:
    """The critic role the server must run on this owner output, if any."""
    if not stage:
        return None
    declared = policy.stages.get(stage)
    if declared is None or declared.critic is None or declared.owner != role:
        return None
    mode = policy.doc.pipeline.critic
    if mode == "always" or (mode == "on_escalation" and escalated):
        return declared.critic
    return None


def critic_prompt(stage: str, owner_output: str) -> str:
    return (
        f"Review the owner's output for the {stage!r} stage. Do not rewrite it.\n\n{owner_output}"
    )


def critique_of(review: RunResult) -> Critique:
    return Critique(
        role=review.role,
        model=review.model,
        output=review.output,
        structured=review.structured,
        contract=review.contract,
        request_id=review.request_id,
        cost_micro=review.cost_micro,
    )
