"""The policy: schema, loading, hashing, routing, escalation and budget arithmetic.

Pure: no network, no MCP, no imports from the other rolegate packages but errors."""

from rolegate.policy.compiled import Policy, canonical_json
from rolegate.policy.decision import BudgetSnapshot, Decision, RouteRequest, ScopeUsage
from rolegate.policy.loader import load_default_policy, load_policy, load_policy_text
from rolegate.policy.router import classify, route
from rolegate.policy.schema import PolicyDocument

__all__ = [
    "BudgetSnapshot",
    "Decision",
    "Policy",
    "PolicyDocument",
    "RouteRequest",
    "ScopeUsage",
    "canonical_json",
    "classify",
    "load_default_policy",
    "load_policy",
    "load_policy_text",
    "route",
]
