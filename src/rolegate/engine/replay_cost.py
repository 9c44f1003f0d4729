"""What a recorded decision cost, and what its replay would have cost (``rolegate replay``).

A decision that was run has "call" audit records (``accounting.settle``): its old cost is
what they were charged, and its new cost is their actual input and output tokens at the new
model's prices (a call made on a declared fallback keeps that model, if the new policy still
has it). A decision never run is costed at its worst case (input plus max output): an
estimate, counted apart. Money is integer micro-USD.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rolegate.engine.replay_budget import Charge, touched_lines
from rolegate.policy import Decision, Policy

#: Cost scopes besides the new policy's budget lines, in report order.
SCOPES = ("total", "job", "role", "model", "provider")
NONE = "(none)"


@dataclass(frozen=True, slots=True)
class Priced:
    """One side of a decision's cost: its charges, and whether they are a worst case."""

    charges: tuple[Charge, ...] = ()
    estimated: bool = False

    @property
    def micro(self) -> int:
        return sum(c.micro for c in self.charges)


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def ran(call: Mapping[str, object]) -> bool:
    """Whether the call was paid for: it answered, produced output, or was charged (a call
    that never started was released: nothing to price)."""
    return (
        call.get("code") == "OK"
        or _int(call.get("output_tokens")) > 0
        or _int(call.get("cost_micro")) > 0
    )


def _worst_case(decision: Decision) -> Priced:
    if decision.outcome != "route" or decision.model is None:
        return Priced()
    tokens = decision.tokens.input_tokens if decision.tokens is not None else 0
    charge = Charge(
        job=decision.job,
        role=decision.role,
        model=decision.model,
        provider=decision.provider or NONE,
        micro=decision.worst_case_cost_micro or 0,
        tokens=tokens + (decision.max_output_tokens or 0),
    )
    return Priced((charge,), estimated=True)


def old_cost(decision: Decision, calls: Sequence[Mapping[str, object]]) -> Priced:
    """What the recorded decision cost: its calls' charges, else its worst case."""
    if not calls:
        return _worst_case(decision)
    charges = tuple(
        Charge(
            job=decision.job,
            role=_text(call.get("role")) or decision.role,
            model=_text(call.get("model")) or decision.model or NONE,
            provider=_text(call.get("provider")) or decision.provider or NONE,
            micro=_int(call.get("cost_micro")),
            tokens=_int(call.get("input_tokens")) + _int(call.get("output_tokens")),
        )
        for call in calls
    )
    return Priced(charges)


def new_cost(
    policy: Policy, old: Decision, new: Decision, calls: Sequence[Mapping[str, object]]
) -> Priced:
    """What the replayed decision would have cost: the recorded calls' actual tokens at the
    new prices when it was run, else the new decision's worst case; nothing unless routed."""
    if new.outcome != "route" or new.model is None:
        return Priced()
    if not calls:
        return _worst_case(new)
    return Priced(tuple(_reprice(policy, old, new, call) for call in calls if ran(call)))


def _reprice(policy: Policy, old: Decision, new: Decision, call: Mapping[str, object]) -> Charge:
    model = _text(call.get("model"))
    if model is None or model == old.model or model not in policy.models:
        model = new.model
    assert model is not None
    info = policy.models[model]
    inp, out = _int(call.get("input_tokens")), _int(call.get("output_tokens"))
    return Charge(
        job=new.job,
        role=new.role if model == new.model else _text(call.get("role")) or new.role,
        model=model,
        provider=info.model.provider,
        micro=info.worst_case_cost_micro(inp, out),
        tokens=inp + out,
    )


class CostTable:
    """Old and new micro-USD per scope and target; budget lines are the new policy's."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.sums: dict[str, dict[str, list[int]]] = {scope: {} for scope in SCOPES}
        self.sums["total"]["all"] = [0, 0]
        self.sums["budget"] = {line.id: [0, 0] for line in policy.budgets}

    def add(self, priced: Priced, side: int) -> None:
        """Add one side (0: old, 1: new) of a decision's cost."""
        for charge in priced.charges:
            keys = [
                ("total", "all"),
                ("job", charge.job or NONE),
                ("role", charge.role or NONE),
                ("model", charge.model),
                ("provider", charge.provider),
            ]
            keys += [("budget", line_id) for line_id in touched_lines(self.policy, charge)]
            for scope, target in keys:
                self.sums[scope].setdefault(target, [0, 0])[side] += charge.micro
