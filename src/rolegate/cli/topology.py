"""`rolegate up`, `down`, `status` and `models compat`: the machine the models live on."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Annotated, Any, Literal

import anyio
import typer

from rolegate.cli.common import Call, JsonOpt, PolicyOpt, later
from rolegate.errors import ProviderError, RefusedError
from rolegate.policy import Policy, load_default_policy, load_policy
from rolegate.policy.topology_checks import server_address
from rolegate.topology.residency import LoadReport, Residency
from rolegate.topology.servers import Servers, ServerSpec, default_state_dir, rss_bytes


def _policy(path: str | None) -> Policy:
    return load_default_policy() if path is None else load_policy(path)


def _residency(policy: Policy, servers: Servers) -> tuple[Residency, Any]:
    from rolegate.engine.providers import ProviderPool
    from rolegate.plugins.manager import build_registry

    pool = ProviderPool(policy, build_registry())
    return Residency(policy, servers, pool.client), pool


def _waiting(policy: Policy) -> Callable[[str, int, int], None]:
    """Says which model `up` waits for: a server start or a model load can take minutes."""

    def say(mid: str, i: int, n: int) -> None:
        address = policy.doc.providers[policy.doc.models[mid].provider].base_url
        print(f"[{i}/{n}] waiting for {mid} ({address}) to be up and loaded...",
              file=sys.stderr, flush=True)  # fmt: skip

    return say


def _cmd_up(args: argparse.Namespace) -> int:
    policy = _policy(args.policy)
    servers = Servers(default_state_dir())

    async def up() -> list[tuple[str, LoadReport | RefusedError | ProviderError]]:
        residency, pool = _residency(policy, servers)
        try:
            return await residency.up(args.tier, _waiting(policy))
        finally:
            await residency.aclose()
            await pool.aclose()

    results = anyio.run(up)
    rows = []
    for mid, outcome in results:
        if isinstance(outcome, LoadReport):
            state = "started" if outcome.loaded else "already running"
            rows.append({"model": mid, "state": state, "load_ms": outcome.load_ms,
                         "evicted": list(outcome.evicted)})  # fmt: skip
        else:
            rows.append({"model": mid, "state": "failed", "code": str(outcome.code),
                         "error": outcome.message})  # fmt: skip
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            detail = row.get("error") or (f"{row['load_ms']:.0f} ms" if row.get("load_ms") else "")
            print(f"{row['model']:<32} {row['state']:<16} {detail}")
    if not rows:
        print(f"{policy.name}: no servers or tracked models in tier {args.tier}", file=sys.stderr)
    return 1 if any(row["state"] == "failed" for row in rows) else 0


def _cmd_down(args: argparse.Namespace) -> int:
    servers = Servers(default_state_dir())
    records = servers.records()
    if args.policy is not None:
        policy = _policy(args.policy)
        ports = {
            address[1]
            for model in policy.doc.models.values()
            if model.server is not None
            and (address := server_address(policy.doc.providers[model.provider].base_url))
        }
        records = {port: r for port, r in records.items() if port in ports}

    async def down() -> None:
        for record in records.values():
            await servers.stop_record(record)
            print(f"stopped {record.model} (port {record.port}, pid {record.pid})")

    anyio.run(down)
    if not records:
        print("no server started by rolegate is running", file=sys.stderr)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    policy = _policy(args.policy)
    servers = Servers(default_state_dir())

    async def probe() -> tuple[frozenset[str], dict[str, ServerSpec]]:
        residency, pool = _residency(policy, servers)
        try:
            return await residency.refresh(), residency.specs
        finally:
            await residency.aclose()
            await pool.aclose()

    resident, specs = anyio.run(probe)
    records = {r.model: r for r in servers.records().values()}
    rows = []
    for mid in sorted(policy.managed):
        model = policy.doc.models[mid]
        record = records.get(mid)
        rss = rss_bytes(record.pid) if record else None
        state = "running" if mid in resident else "stopped"
        if mid in resident and mid in specs and record is None:
            state = "running (not started by rolegate)"
        rows.append({
            "model": mid, "tier": model.tier, "state": state,
            "where": f"port {specs[mid].port}" if mid in specs else f"ollama {model.provider}",
            "pid": record.pid if record else None,
            "memory_gb": model.memory_gb,
            "rss_mb": None if rss is None else round(rss / 2**20),
            "load_s": None if record is None or record.load_s is None else round(record.load_s, 2),
        })  # fmt: skip
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        extra = f"pid {row['pid']}, {row['rss_mb']} MB resident, loaded in {row['load_s']} s"
        print(f"{row['model']:<32} {row['tier']:<5} {row['where']:<16} {row['state']}"
              + (f" ({extra})" if row["pid"] else ""))  # fmt: skip
    if policy.doc.residency is not None:
        used = sum(policy.doc.models[m].memory_gb or 0 for m in resident)
        print(f"memory: {used:g} of {policy.doc.residency.memory_gb:g} GB declared in use")
    return 0


def _cmd_compat(args: argparse.Namespace) -> int:
    from rolegate.topology.compat import compare_files, compatibility_json, format_compatibility

    result = compare_files(args.target, args.draft)
    if args.json:
        print(json.dumps(compatibility_json(result), indent=2))
    else:
        print(format_compatibility(result))
    return 0 if result.compatible else 1


def up(
    policy: PolicyOpt = None,
    tier: Annotated[
        Literal["hot", "warm", "cold"],
        typer.Option(help="hot: HOT only; warm: HOT + WARM; cold: everything"),
    ] = "hot",
    json: JsonOpt = False,
) -> Call:
    """Start the policy's servers and load its models by tier."""
    return later(_cmd_up, locals())


def down(
    policy: Annotated[str | None, typer.Option(help="only this policy's servers")] = None,
) -> Call:
    """Stop the servers rolegate started (and nothing else)."""
    return later(_cmd_down, locals())


def status(policy: PolicyOpt = None, json: JsonOpt = False) -> Call:
    """Each tracked model: tier, port, state, memory, load time."""
    return later(_cmd_status, locals())


models_app = typer.Typer(help="Model file utilities: compat.")


@models_app.command()
def compat(
    target: Annotated[str, typer.Argument(help="the target model's GGUF file")],
    draft: Annotated[str, typer.Argument(help="the draft model's GGUF file")],
    json: JsonOpt = False,
) -> Call:
    """Can DRAFT serve as TARGET's speculative draft? (exit 1 when it cannot)"""
    return later(_cmd_compat, locals(), models_command="compat")


def register(app: typer.Typer) -> None:
    app.command()(up)
    app.command()(down)
    app.command()(status)
    app.add_typer(models_app, name="models")
