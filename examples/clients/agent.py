"""A small agent that drives rolegate over stdio with the MCP Python SDK.

Run: python examples/clients/agent.py ["task text"] [--policy FILE] [--mode legacy]

It spawns `python -m rolegate serve` (same interpreter), then: lists the tools, asks
route_task where the task should go, checks the budget for it, runs it with run_role,
and asks escalate whether the role should hand over. Tool errors (``isError``, text
``CODE: sentence``) are printed, not raised: with no model server running, run_role
answers PROVIDER_UNAVAILABLE and the agent carries on.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import anyio
from mcp import Client, StdioServerParameters
from mcp.client.context import ClientRequestContext
from mcp_types import CallToolResult, ElicitRequestParams, ElicitResult, ErrorData, TextContent

# Only these reach the server (plus the SDK's safe defaults: HOME, PATH, ...).
PASS_ENV_SUFFIXES = ("_API_KEY",)


def server_params(policy: str | None) -> StdioServerParameters:
    args = ["-m", "rolegate", "serve", "--log-level", "WARNING"]
    if policy:
        args += ["--policy", policy]
    env = {k: v for k, v in os.environ.items() if k.endswith(PASS_ENV_SUFFIXES)}
    return StdioServerParameters(command=sys.executable, args=args, env=env)


async def decline_all(
    context: ClientRequestContext,  # noqa: ARG001 - the SDK's callback signature
    params: ElicitRequestParams,
) -> ElicitResult | ErrorData:
    """An unattended agent cannot ask its user: refuse any fallback rolegate proposes."""
    print(f"  (server asked: {params.message!r} -> declined)")
    return ElicitResult(action="decline")


def text_of(result: CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, TextContent))


async def call(client: Client, tool: str, arguments: dict[str, Any]) -> dict[str, Any] | None:
    """Call a tool; print and return its structured result, or print its error and return None."""
    shown = {k: v for k, v in arguments.items() if k not in ("task", "prompt", "text")}
    print(f"\n> {tool} {json.dumps(shown)}")
    result = await client.call_tool(tool, arguments)
    if result.is_error:
        print(f"  tool error: {text_of(result)}")
        return None
    data: dict[str, Any] = result.structured_content or json.loads(text_of(result))
    return data


async def run(task: str, policy: str | None, mode: str) -> int:
    async with Client(server_params(policy), mode=mode, elicitation_callback=decline_all) as client:
        print(f"connected: protocol {client.protocol_version}")
        tools = (await client.list_tools()).tools
        print("tools:", ", ".join(t.name for t in tools))

        decision = await call(client, "route_task", {"task": task})
        if decision is None:
            return 1
        print(f"  {decision['code']}: {decision['message']}")
        print(f"  role={decision['role']} model={decision['model']} id={decision['decision_id']}")
        if decision["outcome"] == "refuse":
            print("  remedies:", "; ".join(decision.get("remedies") or []) or "none")
            return 0
        role = decision["role"]

        budget = await call(client, "check_budget", {"role": role, "text": task})
        if budget is not None and budget["check"] is not None:
            check = budget["check"]
            print(f"  {check['code']}: {check['message']}")
            print(f"  ledger={budget['ledger']} scopes={len(budget['scopes'])}")

        run_result = await call(
            client,
            "run_role",
            {"role": role, "prompt": task, "decision_id": decision["decision_id"]},
        )
        if run_result is not None:
            usage = run_result["usage"]
            print(f"  {run_result['model']}: {run_result['output'][:200]!r}")
            print(f"  tokens in/out {usage['input_tokens']}/{usage['output_tokens']}")

        escalation = await call(
            client, "escalate", {"role": role, "failed_loops": 3, "confidence": 0.3}
        )
        if escalation is not None:
            print(f"  {escalation.get('code')}: {escalation.get('message')}")
            print(f"  provenance={escalation['provenance_id']}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("task", nargs="?", default="summarize the build logs from last night")
    parser.add_argument("--policy", help="policy file (default: the embedded policy)")
    parser.add_argument("--mode", choices=["auto", "legacy", "2026-07-28"], default="auto")
    args = parser.parse_args()
    return anyio.run(run, args.task, args.policy, args.mode)


if __name__ == "__main__":
    raise SystemExit(main())
