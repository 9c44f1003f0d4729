"""Under local_only no cloud endpoint is contacted: not to run, count, probe or fall back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.server.mcpserver import MCPServer

from rolegate.engine.bootstrap import build_engine
from rolegate.policy import load_policy
from rolegate.server.app import build_server
from tests.server.conftest import ERAS
from tests.support.servers import CountingEndpoint, free_port

pytestmark = pytest.mark.anyio

POLICY = """
version: 1
name: local-only-test
providers:
  echo: {{type: echo, base_url: "echo://", locality: local}}
  dead: {{type: openai, base_url: "http://127.0.0.1:{dead}/v1", locality: local, max_retries: 0}}
  cloud: {{type: openai, base_url: "http://127.0.0.1:{cloud}/v1", locality: cloud,
           api_key_env: CLOUD_KEY, max_retries: 0}}
models:
  echo-1: {{provider: echo, name: echo-1, context_window: 4096, reserve_tokens: 512}}
  dead-1: {{provider: dead, name: dead-1, context_window: 4096, reserve_tokens: 512}}
  cloud-1: {{provider: cloud, name: cloud-1, context_window: 100000, reserve_tokens: 512}}
roles:
  cloud_role: {{model: cloud-1, fallback: {{models: [echo-1], mode: ask}}}}
  local_auto: {{model: dead-1, fallback: {{models: [cloud-1], mode: auto}}}}
  escalator: {{model: echo-1, escalation: {{ladder: [cloud-1]}}}}
jobs:
  private: {{role: local_auto, local_only: true}}
"""


@pytest.fixture
def server(tmp_path: Path, cloud: CountingEndpoint) -> MCPServer:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY.format(dead=free_port(), cloud=cloud.port))
    return build_server(build_engine(load_policy(path), env={"CLOUD_KEY": "k"}))


async def call(client: Client, tool: str, **args: Any) -> Any:
    return await client.call_tool(tool, args)


@pytest.mark.parametrize("era", ERAS)
async def test_local_only_never_contacts_the_cloud(
    server: MCPServer, cloud: CountingEndpoint, era: str
) -> None:
    async with Client(server, mode=era) as client:
        direct = await call(client, "run_role", role="cloud_role", prompt="hi", job="private")
        fallback = await call(client, "run_role", role="local_auto", prompt="hi", job="private")
        esc = await call(client, "escalate", role="escalator", job="private", user_request=True)
        routed = await call(client, "route_task", task="hi", job="private", role="cloud_role")
    assert direct.content[0].text.startswith("LOCAL_ONLY_VIOLATION: cloud-1 is a cloud model")
    # The local primary is down; its declared fallback is cloud, which local_only forbids.
    assert fallback.content[0].text.startswith("LOCAL_ONLY_VIOLATION: cloud-1")
    assert esc.structured_content["code"] == "LOCAL_ONLY_VIOLATION"
    assert routed.structured_content["code"] == "LOCAL_ONLY_VIOLATION"
    assert cloud.connections == 0


async def test_the_counter_sees_cloud_traffic_when_it_is_allowed(
    server: MCPServer, cloud: CountingEndpoint
) -> None:
    async with Client(server, mode="legacy") as client:
        result = await call(client, "run_role", role="cloud_role", prompt="hi")
    assert result.is_error  # the fake endpoint hangs up; the point is that it was contacted
    assert cloud.connections >= 1
