"""`rolegate up`, `status`, `down`, `models compat` and `check` run as the operator runs them:
a separate process per command, real llama.cpp servers, a state directory of the test's own.
The servers `up` starts outlive it; `down` stops them and never a server it did not start."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from rolegate.topology.compat import read_tokenizer
from rolegate.topology.servers import Servers
from tests.support.llama import llama_server, require_llama
from tests.support.servers import free_port
from tests.topology.test_compat import write_gguf

pytestmark = pytest.mark.slow

POLICY = """
version: 1
name: cli-topology
providers:
  front-srv: {{type: openai, base_url: "http://127.0.0.1:{hot_port}/v1", locality: local}}
  worker-srv: {{type: openai, base_url: "http://127.0.0.1:{warm_port}/v1", locality: local}}
models:
  front: {{provider: front-srv, name: front, tier: hot, memory_gb: 1, {common},
          server: {{gguf: "{gguf}", {server}{draft}}}}}
  worker: {{provider: worker-srv, name: worker, tier: warm, memory_gb: 1, {common},
           server: {{gguf: "{warm_gguf}", {server}}}}}
roles:
  front: {{model: front}}
  worker: {{model: worker}}
residency: {{memory_gb: 4, load_timeout_s: 60}}
"""
COMMON = "context_window: 1024, reserve_tokens: 128"
SERVER = "ctx_size: 1024, threads: 1, parallel: 1"


@dataclass
class Setup:
    tmp: Path
    env: dict[str, str]
    state: Path
    gguf: str
    hot_port: int
    warm_port: int

    def policy(
        self,
        *,
        hot_port: int | None = None,
        gguf: str | None = None,
        warm_gguf: str | None = None,
        draft: str | None = None,
        name: str = "policy.yaml",
    ) -> Path:
        path = self.tmp / name
        path.write_text(
            POLICY.format(
                hot_port=hot_port or self.hot_port,
                warm_port=self.warm_port,
                gguf=gguf or self.gguf,
                warm_gguf=warm_gguf or self.gguf,
                common=COMMON,
                server=SERVER,
                draft=f', draft: {{gguf: "{draft}"}}' if draft else "",
            )
        )
        return path

    def run(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "rolegate", *map(str, args)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


def _stop_everything(state: Path) -> None:
    """Whatever the test left running in its state directory, stopped (only ours)."""
    servers = Servers(state)

    async def stop() -> None:
        for record in servers.records().values():
            with anyio.move_on_after(15):
                await servers.stop_record(record)

    anyio.run(stop)
    for record in servers.records().values():  # still alive: same pid and start time
        os.kill(record.pid, signal.SIGKILL)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    binary, gguf = require_llama()
    state = tmp_path / "state"
    env = {
        **os.environ,
        "ROLEGATE_STATE_DIR": str(state),
        "ROLEGATE_LLAMA_SERVER": binary,
        "ROLEGATE_GGUF": gguf,
    }
    s = Setup(tmp_path, env, state, gguf, free_port(), free_port())
    try:
        yield s
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired):
            s.run("down")
        _stop_everything(state)
        assert Servers(state).records() == {}


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _rows(out: str) -> dict[str, dict[str, Any]]:
    return {row["model"]: row for row in json.loads(out)}


def _alive(pid: int) -> bool:
    """Is the process running (a zombie waiting for init to reap it has ended)?"""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_up_status_down_lifecycle(setup: Setup) -> None:
    policy = setup.policy()

    up = setup.run("up", "--policy", policy)
    assert up.returncode == 0, up.stderr
    lines = up.stdout.splitlines()
    assert len(lines) == 1, up.stdout  # HOT only
    assert lines[0].split()[:2] == ["front", "started"]
    assert lines[0].rstrip().endswith(" ms")
    # `up` has exited; what it started keeps serving, in a session of its own (so a Ctrl-C
    # in the shell that ran `up` does not reach it).
    assert _healthy(setup.hot_port)
    assert not _healthy(setup.warm_port)

    status = setup.run("status", "--policy", policy, "--json")
    assert status.returncode == 0, status.stderr
    rows = _rows(status.stdout)
    assert set(rows) == {"front", "worker"}
    front, worker = rows["front"], rows["worker"]
    assert front["state"] == "running"
    assert front["tier"] == "hot"
    assert front["where"] == f"port {setup.hot_port}"
    assert isinstance(front["pid"], int)
    assert _alive(front["pid"])
    assert os.getsid(front["pid"]) == front["pid"]
    assert front["rss_mb"] > 0
    assert front["load_s"] > 0
    assert front["memory_gb"] == 1
    assert worker["state"] == "stopped"
    assert worker["pid"] is None
    assert worker["rss_mb"] is None
    assert worker["load_s"] is None
    assert worker["where"] == f"port {setup.warm_port}"
    (record,) = Servers(setup.state).records().values()
    assert (record.model, record.port, record.pid) == ("front", setup.hot_port, front["pid"])

    text = setup.run("status", "--policy", policy)
    assert text.returncode == 0, text.stderr
    assert f"pid {front['pid']}" in text.stdout
    assert "memory: 1 of 4 GB declared in use" in text.stdout

    warm = setup.run("up", "--policy", policy, "--tier", "warm", "--json")
    assert warm.returncode == 0, warm.stderr
    rows = _rows(warm.stdout)
    assert list(rows) == ["front", "worker"]  # HOT first
    assert rows["front"]["state"] == "already running"
    assert rows["front"]["load_ms"] is None
    assert rows["worker"]["state"] == "started"
    assert rows["worker"]["load_ms"] > 0
    assert rows["worker"]["evicted"] == []
    assert _healthy(setup.warm_port)
    assert _healthy(setup.hot_port)
    after = _rows(setup.run("status", "--policy", policy, "--json").stdout)
    assert after["front"]["pid"] == front["pid"]  # the HOT server was not restarted
    assert after["worker"]["state"] == "running"
    pids = [after["front"]["pid"], after["worker"]["pid"]]

    down = setup.run("down", "--policy", policy)
    assert down.returncode == 0, down.stderr
    assert f"stopped front (port {setup.hot_port}, pid {pids[0]})" in down.stdout
    assert f"stopped worker (port {setup.warm_port}, pid {pids[1]})" in down.stdout
    assert not _healthy(setup.hot_port)
    assert not _healthy(setup.warm_port)
    assert not any(_alive(pid) for pid in pids)
    assert Servers(setup.state).records() == {}
    stopped = _rows(setup.run("status", "--policy", policy, "--json").stdout)
    assert {m: r["state"] for m, r in stopped.items()} == {"front": "stopped", "worker": "stopped"}

    again = setup.run("down", "--policy", policy)
    assert again.returncode == 0, again.stderr
    assert again.stdout == ""
    assert "no server started by rolegate is running" in again.stderr


def test_a_server_rolegate_did_not_start_is_reported_and_never_stopped(setup: Setup) -> None:
    with llama_server(ctx=1024, parallel=1) as foreign:
        port = int(foreign.url.rsplit(":", 1)[1])
        policy = setup.policy(hot_port=port)

        up = setup.run("up", "--policy", policy, "--json")
        assert up.returncode == 0, up.stderr
        assert [(r["model"], r["state"]) for r in json.loads(up.stdout)] == [
            ("front", "already running")
        ]
        assert Servers(setup.state).records() == {}

        status = _rows(setup.run("status", "--policy", policy, "--json").stdout)
        assert status["front"]["state"] == "running (not started by rolegate)"
        assert status["front"]["pid"] is None
        assert status["worker"]["state"] == "stopped"

        for args in (("down", "--policy", policy), ("down",)):
            down = setup.run(*args)
            assert down.returncode == 0, down.stderr
            assert down.stdout == ""
            assert "no server started by rolegate is running" in down.stderr
            assert foreign.process.poll() is None
            assert _healthy(port)


def test_up_reports_a_model_that_cannot_start_and_exits_1(setup: Setup) -> None:
    missing = setup.tmp / "missing.gguf"
    up = setup.run("up", "--policy", setup.policy(gguf=str(missing)))
    assert up.returncode == 1
    assert "front" in up.stdout
    assert "failed" in up.stdout
    assert str(missing) in up.stdout
    assert not _healthy(setup.hot_port)
    assert Servers(setup.state).records() == {}


@pytest.fixture(scope="module")
def other_bos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test model's tokenizer, token for token, with another BOS (written by GGUFWriter)."""
    _, gguf = require_llama()
    info = read_tokenizer(gguf)
    tokens = [t.decode("utf-8") for t in info.tokens]
    return write_gguf(
        tmp_path_factory.mktemp("gguf") / "other-bos.gguf",
        tokens,
        model=info.model,
        pre=info.pre or "default",
        bos=tokens.index(","),
        eos=info.eos_id if info.eos_id is not None else 1,
        add_bos=bool(info.add_bos),
        add_eos=bool(info.add_eos),
    )


def test_models_compat(setup: Setup, other_bos: Path) -> None:
    same = setup.run("models", "compat", setup.gguf, setup.gguf)
    assert same.returncode == 0, same.stderr
    assert same.stdout.splitlines()[0] == "compatible"

    differs = setup.run("models", "compat", setup.gguf, other_bos)
    assert differs.returncode == 1, differs.stderr
    first, *rest = differs.stdout.splitlines()
    assert first == "INCOMPATIBLE: 1 difference"
    assert rest[0].startswith("  bos_id: the draft starts sequences with token")
    assert "(',')" in rest[0]

    as_json = setup.run("models", "compat", setup.gguf, other_bos, "--json")
    assert as_json.returncode == 1, as_json.stderr
    data = json.loads(as_json.stdout)
    assert data["compatible"] is False
    assert [d["field"] for d in data["differences"]] == ["bos_id"]
    assert data["draft"]["path"] == str(other_bos)
    assert data["target"]["bos_id"] == 2

    same_json = json.loads(setup.run("models", "compat", setup.gguf, setup.gguf, "--json").stdout)
    assert same_json["compatible"] is True
    assert same_json["differences"] == []

    missing = setup.run("models", "compat", setup.gguf, setup.tmp / "nope.gguf")
    assert missing.returncode == 2
    assert "nope.gguf" in missing.stderr


def test_check_reports_missing_files_and_incompatible_drafts(setup: Setup, other_bos: Path) -> None:
    good = setup.policy(draft=setup.gguf, name="good.yaml")
    ok = setup.run("check", good)
    assert ok.returncode == 0, ok.stderr
    assert f"{good}: OK cli-topology" in ok.stdout

    missing = setup.tmp / "missing.gguf"
    no_model = setup.policy(warm_gguf=str(missing), name="no-model.yaml")
    bad = setup.run("check", no_model)
    assert bad.returncode == 1
    assert f"models.worker.server.gguf: error: no model file at {missing}" in bad.stderr
    assert "INVALID 1 topology problem(s)" in bad.stdout

    no_draft = setup.policy(draft=str(setup.tmp / "draft-missing.gguf"), name="no-draft.yaml")
    bad = setup.run("check", no_draft)
    assert bad.returncode == 1
    assert "models.front.server.draft.gguf: error: no draft file at" in bad.stderr
    assert "draft-missing.gguf" in bad.stderr

    incompatible = setup.policy(draft=str(other_bos), name="incompatible.yaml")
    bad = setup.run("check", incompatible)
    assert bad.returncode == 1
    assert "models.front.server.draft: error: the draft cannot serve front:" in bad.stderr
    assert "starts sequences with token" in bad.stderr
    assert "INVALID 1 topology problem(s)" in bad.stdout

    # Every policy is checked, and one bad one fails the run.
    both = setup.run("check", good, incompatible)
    assert both.returncode == 1
    assert f"{good}: OK" in both.stdout
    assert f"{incompatible}: INVALID" in both.stdout
