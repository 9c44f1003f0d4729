"""Rolegate's errors: one shallow tree, every leaf carrying a stable code.

    RolegateError                 code + a sentence a person can act on
    ├── PolicyError               the policy file cannot be used
    │   ├── PolicyLoadError       unreadable, unparsable, unknown format   (POLICY_LOAD)
    │   └── PolicyInvalidError    schema or cross-reference problems, all
    │                             of them at once in ``.problems``         (POLICY_INVALID)
    ├── RequestError              the caller's request is wrong: UNKNOWN_ROLE, UNKNOWN_JOB,
    │                             UNKNOWN_CHANNEL, INVALID_ARGUMENT, ...
    ├── RefusedError              the policy refuses the call (OVER_BUDGET, LOCAL_ONLY_VIOLATION,
    │                             NOT_ALLOWLISTED, BUDGET_EXHAUSTED, NEEDS_CONSENT,
    │                             CONSENSUS_FORBIDDEN, CRITIC_NOT_ALLOWED, FALLBACK_FORBIDDEN,
    │                             MODEL_COLD, MEMORY_EXCEEDED, ...)
    ├── ProviderError             the model server failed: PROVIDER_UNAVAILABLE,
    │                             PROVIDER_TIMEOUT, PROVIDER_ERROR, BAD_RESPONSE, and its
    │                             load on demand: LOAD_TIMEOUT, LOAD_FAILED
    ├── LedgerError               the budget ledger cannot be used (BUDGET_UNAVAILABLE)
    └── PluginError               a plugin failed to load, or two claim one name (PLUGIN_ERROR)

The MCP tool layer (``server.boundary``) is the one place that turns these into tool errors
(``CODE: sentence``), together with the SDK's own complaints (UNKNOWN_TOOL, INVALID_ARGUMENT)
and crashes (INTERNAL_ERROR); nothing else catches broadly. LEDGER_SPOOLED is a warning code:
a run whose spend could not be committed returns its output with it.
"""

from __future__ import annotations

from enum import StrEnum


class Code(StrEnum):
    """Stable codes. Clients may switch on them; never rename one."""

    ROUTED = "ROUTED"
    SCRIPT_ONLY = "SCRIPT_ONLY"
    OVER_BUDGET = "OVER_BUDGET"
    NO_POLICY = "NO_POLICY"
    NO_SUFFICIENT_MODEL = "NO_SUFFICIENT_MODEL"
    LOCAL_ONLY_VIOLATION = "LOCAL_ONLY_VIOLATION"
    NOT_ALLOWLISTED = "NOT_ALLOWLISTED"
    BUDGET_EXHAUSTED = "BUDGET_EXHAUSTED"
    BUDGET_UNAVAILABLE = "BUDGET_UNAVAILABLE"
    STREAMING_FORBIDDEN = "STREAMING_FORBIDDEN"
    CLOUD_JUDGE_REQUIRED = "CLOUD_JUDGE_REQUIRED"
    INTENT_UNCERTAIN = "INTENT_UNCERTAIN"
    NEEDS_CONSENT = "NEEDS_CONSENT"
    CONSENSUS_FORBIDDEN = "CONSENSUS_FORBIDDEN"
    CRITIC_NOT_ALLOWED = "CRITIC_NOT_ALLOWED"
    FALLBACK_FORBIDDEN = "FALLBACK_FORBIDDEN"
    LEDGER_SPOOLED = "LEDGER_SPOOLED"
    UNKNOWN_TOOL = "UNKNOWN_TOOL"
    UNKNOWN_ROLE = "UNKNOWN_ROLE"
    UNKNOWN_JOB = "UNKNOWN_JOB"
    UNKNOWN_MODEL = "UNKNOWN_MODEL"
    UNKNOWN_CHANNEL = "UNKNOWN_CHANNEL"
    UNKNOWN_DECISION = "UNKNOWN_DECISION"
    UNKNOWN_TASK = "UNKNOWN_TASK"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    POLICY_LOAD = "POLICY_LOAD"
    POLICY_INVALID = "POLICY_INVALID"
    PROVIDER_UNAVAILABLE = "PROVIDER_UNAVAILABLE"
    PROVIDER_TIMEOUT = "PROVIDER_TIMEOUT"
    PROVIDER_ERROR = "PROVIDER_ERROR"
    BAD_RESPONSE = "BAD_RESPONSE"
    CONTRACT_VIOLATION = "CONTRACT_VIOLATION"
    MODEL_COLD = "MODEL_COLD"
    MEMORY_EXCEEDED = "MEMORY_EXCEEDED"
    LOAD_TIMEOUT = "LOAD_TIMEOUT"
    LOAD_FAILED = "LOAD_FAILED"
    QUALITY_BELOW_BAR = "QUALITY_BELOW_BAR"
    QUALITY_UNPROVEN = "QUALITY_UNPROVEN"
    PLUGIN_ERROR = "PLUGIN_ERROR"
    INTERNAL_ERROR = "INTERNAL_ERROR"


class RolegateError(Exception):
    """Base of every error rolegate raises on purpose."""

    default_code: Code = Code.INTERNAL_ERROR

    def __init__(self, message: str, *, code: Code | None = None) -> None:
        super().__init__(message)
        self.code: Code = code or self.default_code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class PolicyError(RolegateError):
    """The policy file cannot be used."""

    default_code = Code.POLICY_INVALID


class PolicyLoadError(PolicyError):
    """The file is missing, unreadable, or not valid YAML/JSON/TOML."""

    default_code = Code.POLICY_LOAD


class PolicyProblem:
    """One problem found in a policy: where it is and what is wrong."""

    __slots__ = ("location", "message", "severity")

    def __init__(self, location: str, message: str, severity: str = "error") -> None:
        self.location = location
        self.message = message
        self.severity = severity

    def render(self, source: str) -> str:
        return f"{source}: {self.location}: {self.severity}: {self.message}"

    def __repr__(self) -> str:
        return f"PolicyProblem({self.location!r}, {self.message!r}, {self.severity!r})"


class PolicyInvalidError(PolicyError):
    """Schema or cross-reference errors; ``problems`` lists every one of them."""

    default_code = Code.POLICY_INVALID

    def __init__(self, source: str, problems: list[PolicyProblem]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(p.render(source) for p in problems)
        super().__init__(f"{source} has {len(problems)} problem(s):\n{lines}")


class RequestError(RolegateError):
    """The caller asked for something that does not exist or is malformed."""

    default_code = Code.INVALID_ARGUMENT


class RefusedError(RolegateError):
    """The policy refuses the call; the code says which rule."""

    default_code = Code.NO_POLICY


class ProviderError(RolegateError):
    """A model server failed or answered nonsense.

    ``partial_output_tokens`` is set when a stream broke after output began, so
    that what was produced is charged rather than released.
    """

    default_code = Code.PROVIDER_ERROR
    partial_output_tokens: int | None = None
    answered: bool = False  # the server sent an answer (an HTTP error): never retried


class LedgerError(RolegateError):
    """The budget ledger cannot be read or written; admission fails closed."""

    default_code = Code.BUDGET_UNAVAILABLE


class PluginError(RolegateError):
    """A plugin could not be loaded, or two plugins claim one name."""

    default_code = Code.PLUGIN_ERROR
