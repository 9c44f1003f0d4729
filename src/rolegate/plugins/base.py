"""What plugins provide: provider types (model servers), embedder types, role kinds and
output checkers (audit sinks are plain callables, see ``rolegate.plugins.sinks``).

A provider type turns a policy ``providers.<name>`` entry into a client; a
client runs one chat call at a time per request, streaming deltas to a
callback, and reports usage. Clients raise only ``rolegate.errors.ProviderError``
with one of PROVIDER_UNAVAILABLE, PROVIDER_TIMEOUT, PROVIDER_ERROR, BAD_RESPONSE.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from rolegate.policy.schema import Contract, Provider

OnDelta = Callable[[str], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Message:
    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True, slots=True)
class ChatRequest:
    model: str
    messages: Sequence[Message]
    max_output_tokens: int
    timeout_s: float
    stream: bool = True
    temperature: float | None = None
    keep_alive: str | None = None
    json_schema: dict[str, Any] | None = None  # constrain the output, where the server can
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ChatResult:
    text: str
    input_tokens: int | None
    output_tokens: int | None
    finish_reason: str | None = None
    ttft_s: float | None = None
    streamed: bool = False


@dataclass(frozen=True, slots=True)
class TokenCount:
    tokens: int
    exact: bool


class ProviderClient(Protocol):
    """A connection to one model server."""

    async def chat(self, request: ChatRequest, on_delta: OnDelta | None = None) -> ChatResult: ...

    async def count_tokens(self, model: str, messages: Sequence[Message]) -> TokenCount | None:
        """Exact input tokens if the server can count them, else None."""
        ...

    async def list_models(self) -> list[str]: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ResidentModel:
    """A model a server holds in memory. ``expires_at``: when the server will unload it by
    itself (ISO 8601), None if it never will or did not say."""

    name: str
    size_bytes: int | None
    vram_bytes: int | None
    expires_at: str | None


@runtime_checkable
class ResidencyClient(Protocol):
    """A provider client that can report and change what its server holds in memory
    (Ollama). The residency manager uses it when a client has it. Raises only ProviderError.
    """

    async def resident_models(self) -> list[ResidentModel]:
        """The models the server has loaded now."""
        ...

    async def load(self, model: str, keep_alive: str | None) -> None:
        """Load ``model`` and keep it for ``keep_alive`` (None: the server's default)."""
        ...

    async def unload(self, model: str) -> None:
        """Drop ``model`` from memory now."""
        ...


class ProviderType(Protocol):
    """Makes clients for policy providers whose ``type`` equals ``name``."""

    name: str

    def create(
        self,
        config: Provider,
        *,
        api_key: str | None,
        transport: Any = None,
    ) -> ProviderClient:
        """``transport``: an httpx/httpx2 async transport for the client library, or None."""
        ...


class Embedder(Protocol):
    """Turns texts into vectors, for the intent classifier. Raises only ProviderError."""

    id: str  # the embedder and its model, e.g. 'e5-small' or 'openai:http://host/v1:bge-m3'

    async def embed(self, texts: Sequence[str]) -> Sequence[Sequence[float]]:
        """One vector per text, in order (any length; the classifier normalises them)."""
        ...

    async def aclose(self) -> None: ...


class EmbedderType(Protocol):
    """Makes embedders. ``name`` is a provider type (an embedding model on a policy
    provider of that type: ``classifier.embedder_model``) or, when ``in_process`` is true, a
    name the policy's ``classifier.embedder`` gives (no provider, no server)."""

    name: str
    in_process: bool

    def create(
        self,
        config: Provider | None,
        *,
        model: str | None,
        api_key: str | None,
        transport: Any = None,
    ) -> Embedder:
        """``config`` and ``model``: the provider and the provider's model name (None for an
        in-process embedder)."""
        ...


@dataclass(frozen=True, slots=True)
class ContractCheck:
    valid: bool
    structured: dict[str, Any] | None
    errors: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RoleKind:
    """Behaviour shared by roles of one kind, registered with ``register_roles``.

    ``name``: what a policy role's ``kind:`` names. ``system_prompt``: the prompt a role of
    this kind uses when the caller sends none (None: no default). ``authority``: the only
    authority a role of this kind may have; a mismatch refuses the policy at server start.
    """

    name: str
    description: str
    system_prompt: str | None = None
    authority: Literal["owner", "sidecar", "judge"] = "owner"


@dataclass(frozen=True, slots=True)
class Verdict:
    """A checker's judgement of one output.

    ``score``: from 0 to 1 (1.0 or 0.0 for pass/fail checkers). ``reason``: why it failed,
    in words about the output, never quoting it: verdicts are stored and printed, and
    rolegate never stores completion text (e.g. "no number in the answer").
    """

    passed: bool
    score: float
    reason: str = ""


@dataclass(frozen=True, slots=True)
class CheckContext:
    """What a checker may know besides the output: the case, the model, the contracts."""

    case_id: str
    model: str
    contracts: Mapping[str, Contract]  # the policy's contracts, by name


class Checker(Protocol):
    """Judges a model's output for an eval case whose ``check.type`` equals ``name``.

    ``spec`` is the case's ``check:`` mapping without ``type``. ``validate`` runs when the
    suite is loaded, before any model is called; ``check`` runs once per output and must
    not raise for any output (a bad output is a failing ``Verdict``).
    """

    @property
    def name(self) -> str: ...

    def validate(self, spec: Mapping[str, object], contracts: Mapping[str, Contract]) -> None:
        """Raise ``ValueError`` with a sentence a person can act on if ``spec`` is wrong."""
        ...

    async def check(
        self, output: str, spec: Mapping[str, object], context: CheckContext
    ) -> Verdict:
        """The verdict on ``output``; ``spec`` has passed ``validate``."""
        ...
