"""What `rolegate serve` says on a terminal before the JSON logs: the policy, the ledger,
which providers answer right now (probed in background threads, never on the request path),
and what it waits for. Never printed when a client started the server (stderr is then the
client's MCP log, JSON lines only)."""

from __future__ import annotations

import errno
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TextIO
from urllib.parse import urlsplit

from rolegate import __version__
from rolegate.policy import Policy

PROBE_TIMEOUT_S = 1.0
"""How long the start-up check waits for each provider (all are checked at once)."""
LISTEN_WAIT_S = 10.0
"""How long the terminal greeting waits for the HTTP port to accept before saying so."""


def is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


class Greeting:
    """Plain lines on stderr for a person at a terminal, written under the log handler's lock
    so that they never interleave with a JSON line."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def say(self, *lines: str) -> None:
        handlers = logging.getLogger().handlers
        lock = handlers[0].lock if handlers and handlers[0].lock is not None else None
        if lock is not None:
            lock.acquire()
        try:
            self.stream.write("".join(line + "\n" for line in lines))
            self.stream.flush()
        except (OSError, ValueError):
            pass  # the terminal went away: nothing to tell
        finally:
            if lock is not None:
                lock.release()

    def start(
        self,
        policy: Policy,
        policy_path: str | None,
        waiting: Sequence[str],
        *,
        listen: tuple[str, int] | None,
        then: Callable[[], None],
    ) -> threading.Thread:
        """Check the providers (and the HTTP port) in the background, then say the rest."""

        def run() -> None:
            listening = threading.Event()
            waiter = None
            if listen is not None:
                waiter = threading.Thread(target=_wait_for_port, args=(*listen, listening))
                waiter.daemon = True
                waiter.start()
            lines = provider_lines(policy, policy_path, probe_providers(policy))
            if waiter is not None:
                waiter.join(LISTEN_WAIT_S)
            if listen is not None and not listening.is_set():
                self.say(*lines, f"  NOT listening on port {listen[1]}: see the log below")
            else:
                self.say(*lines, *waiting)
            then()

        thread = threading.Thread(target=run, name="rolegate-greeting", daemon=True)
        thread.start()
        return thread


def intro_lines(
    policy: Policy, policy_path: str | None, ledger: str | None, transport: str
) -> list[str]:
    where = "embedded default policy" if policy_path is None else policy_path
    models = len(policy.models)
    return [
        f"rolegate {__version__}: MCP server over {transport}",
        f"  policy:   {where}: {policy.name} revision {policy.revision}, "
        f"{models} model{'s' if models != 1 else ''}",
        f"            {policy.hash}",
        f"  ledger:   {ledger or 'none'}",
    ]


STOP_LINE = "  Ctrl-C stops it. Logs follow, as JSON lines."


def _wait_for_port(host: str, port: int, done: threading.Event) -> None:
    """Set ``done`` once ``host:port`` accepts a connection (within LISTEN_WAIT_S)."""
    target = host.strip("[]")
    if target in ("0.0.0.0", ""):
        target = "127.0.0.1"
    elif target == "::":
        target = "::1"
    deadline = time.monotonic() + LISTEN_WAIT_S
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((target, port), timeout=0.25):
                done.set()
                return
        except OSError:
            time.sleep(0.05)


# ---------------------------------------------------------------------------------------------
# Can the providers be reached right now?


@dataclass(frozen=True)
class Reach:
    """What the start-up check found for one provider. ``reachable`` None: not checked."""

    provider: str
    base_url: str
    reachable: bool | None
    detail: str


def probe_providers(policy: Policy, timeout: float = PROBE_TIMEOUT_S) -> list[Reach]:
    """Each provider's ``base_url``, asked once over HTTP, all at once, each for at most
    ``timeout`` seconds. Any HTTP answer counts as reachable (the check sends no key and
    names no model: it is not the provider's API call). Non-HTTP URLs (a plugin's own
    scheme) are not checked.

    Not ``engine.consent.Probes``: that one lists a model's models through the provider's
    client inside the server's event loop, answers only yes or no, needs the API key, and
    retries; this check runs before (and beside) the loop, in threads, and says why."""
    providers = policy.doc.providers
    found: dict[str, Reach] = {}

    def check(name: str, url: str) -> None:
        found[name] = _probe(name, url, timeout)

    threads = []
    for name, config in providers.items():
        scheme = urlsplit(config.base_url).scheme.lower()
        if scheme not in ("http", "https"):
            found[name] = Reach(name, config.base_url, None, f"not checked ({scheme}:// URL)")
            continue
        thread = threading.Thread(target=check, args=(name, config.base_url), daemon=True)
        thread.start()
        threads.append(thread)
    # A name lookup is not covered by the HTTP timeout: never wait much past it.
    deadline = time.monotonic() + timeout + 0.5
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return [
        found.get(name) or Reach(name, p.base_url, False, f"no answer within {timeout:g} s")
        for name, p in providers.items()
    ]


def _probe(name: str, url: str, timeout: float) -> Reach:
    import httpx

    try:
        with httpx.Client(timeout=timeout, follow_redirects=False) as client:
            client.get(url)
    except httpx.TimeoutException:
        return Reach(name, url, False, f"no answer within {timeout:g} s")
    except (httpx.HTTPError, OSError, ValueError) as exc:
        return Reach(name, url, False, _why(exc))
    return Reach(name, url, True, "reachable")


_ERRNO_WORDS = {
    errno.ECONNREFUSED: "connection refused",
    errno.EHOSTUNREACH: "no route to host",
    errno.ENETUNREACH: "network unreachable",
    errno.ECONNRESET: "connection reset",
    errno.ETIMEDOUT: "connection timed out",
}


def _why(exc: BaseException) -> str:
    seen: BaseException | None = exc
    for _ in range(8):  # the OSError is a few causes down: httpx <- httpcore <- socket
        if seen is None:
            break
        if isinstance(seen, socket.gaierror):
            return "host name not found"
        if isinstance(seen, OSError) and seen.errno in _ERRNO_WORDS:
            return _ERRNO_WORDS[seen.errno]
        seen = seen.__cause__ or seen.__context__
    text = str(exc).strip()
    lowered = text.lower()
    if "connection refused" in lowered:
        return "connection refused"
    if "name or service not known" in lowered or "nodename nor servname" in lowered:
        return "host name not found"
    return f"{type(exc).__name__}: {text[:100]}" if text else type(exc).__name__


def provider_lines(policy: Policy, policy_path: str | None, found: Sequence[Reach]) -> list[str]:
    """One line per provider: where, reachable or why not, and what to do about it."""
    doc = policy.doc
    lines = []
    for reach in found:
        config = doc.providers[reach.provider]
        models = [mid for mid, m in doc.models.items() if m.provider == reach.provider]
        used = ", ".join(models[:3]) + (f" and {len(models) - 3} more" if len(models) > 3 else "")
        kind = "" if config.type == reach.provider else f" ({config.type})"
        head = f"  provider: {reach.provider}{kind} at {reach.base_url}"
        if used:
            head += f" ({used})"
        if reach.reachable is None:
            text = reach.detail
        elif reach.reachable:
            text = "reachable"
        else:
            text = f"not reachable ({reach.detail})"
            hint = _hint(policy, policy_path, reach.provider)
            if hint:
                text += f": {hint}"
        if config.api_key_env and not os.environ.get(config.api_key_env):
            text += f"; set {config.api_key_env} to use it"
        lines.append(f"{head}: {text}")
    return lines


def _hint(policy: Policy, policy_path: str | None, provider: str) -> str:
    doc = policy.doc
    config = doc.providers[provider]
    if config.locality == "cloud":
        return "check the network and the provider's base_url"
    if config.type == "ollama":
        return "start it with `ollama serve`"
    managed = any(m.server is not None for m in doc.models.values() if m.provider == provider)
    if managed:
        where = f" --policy {policy_path}" if policy_path else ""
        return f"`rolegate up{where}` starts its llama.cpp server"
    if config.type == "openai":
        return "start the OpenAI-compatible server (llama.cpp, vLLM, LM Studio) it names"
    return f"start the {config.type} server it names"
