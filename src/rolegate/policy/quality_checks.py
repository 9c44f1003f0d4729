"""Checks of the policy's quality rules: candidates, live evidence, and rules that can
never apply."""

from __future__ import annotations

from collections.abc import Iterable

from rolegate.errors import PolicyProblem
from rolegate.policy.problems import error as _err
from rolegate.policy.problems import warning as _warn
from rolegate.policy.schema import PolicyDocument


def check_quality(doc: PolicyDocument) -> Iterable[PolicyProblem]:
    for rid, role in doc.roles.items():
        at = f"roles.{rid}"
        for mid in role.candidates:
            if mid not in doc.models:
                yield _err(f"{at}.candidates", f"unknown model {mid!r}")
            elif doc.models[mid].premium or doc.models[mid].escalation_only:
                yield _err(
                    f"{at}.candidates",
                    f"{mid!r} is premium or escalation-only: such models are reached by an "
                    "allowlist or a ladder, never chosen by measured quality",
                )
        if role.candidates and role.quality is None:
            yield _err(f"{at}.candidates", "candidates are chosen by a 'quality' rule; add one")
        if role.quality is not None and not role.candidates:
            yield _warn(
                f"{at}.quality",
                "the role has no candidates, so the rule reports evidence but never changes "
                "its model",
            )
        if role.quality is not None and role.quality.live and role.output_contract is None:
            yield _err(
                f"{at}.quality.live",
                "live evidence is the output contract's pass/fail; give the role an "
                "output_contract",
            )
    for iid, intent in doc.intents.items():
        if intent.quality is not None and intent.role is not None:
            yield _warn(
                f"intents.{iid}.quality",
                f"role {intent.role!r} picks this intent's model, so the intent's rule never "
                "applies; put the rule on the role (with candidates)",
            )
