"""Token counts: the calibrated estimate against real tokenizers, per text class.

Run: python benchmarks/bench_tokens.py [--llama-server BIN --gguf FILE]

For every text of benchmarks/data/token_corpus (prose, code, logs, JSON, CJK, emoji), counts
tokens with OpenAI's o200k and cl100k encodings (offline, bpe-openai), with Gemma 3's
tokenizer through llama.cpp's /tokenize (when a llama.cpp server binary and the test GGUF
are given or found in ROLEGATE_LLAMA_SERVER / ROLEGATE_GGUF), and with rolegate's estimate.
Prints, per class and tokenizer, the estimate's ratio to the exact count (the target: within
1.0-1.35 everywhere, never below 1.0), then the counting speed, and the README's example:
3x the README counted by the old rule and the new one.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import bpe_openai

from rolegate.policy.schema import TokenEstimate
from rolegate.policy.tokens import estimate_tokens

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "benchmarks" / "data" / "token_corpus"
CLASSES = ("prose", "code", "logs", "json", "cjk", "emoji")
SETTINGS = TokenEstimate()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Llama:
    """llama.cpp's server with the test GGUF, for Gemma's own tokenizer."""

    def __init__(self, binary: str, gguf: str) -> None:
        self.port = _free_port()
        self.proc = subprocess.Popen(
            [binary, "-m", gguf, "--host", "127.0.0.1", "--port", str(self.port), "-c", "512",
             "-t", "1", "--no-webui"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise SystemExit("llama-server did not start") from None
                time.sleep(0.2)

    def count(self, text: str) -> int:
        body = json.dumps({"content": text, "add_special": False}).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/tokenize", body, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=60) as resp:
            return len(json.load(resp)["tokens"])

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def _texts() -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = {}
    for name in CLASSES:
        folder = CORPUS / name
        out[name] = [(p.name, p.read_text("utf-8")) for p in sorted(folder.glob("*.txt"))]
    return out


def _estimate(text: str) -> int:
    return estimate_tokens(text, SETTINGS, messages=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama-server", default=os.environ.get("ROLEGATE_LLAMA_SERVER"))
    parser.add_argument("--gguf", default=os.environ.get("ROLEGATE_GGUF"))
    parser.add_argument("--per-text", action="store_true", help="print every text's ratios")
    args = parser.parse_args()
    exact: dict[str, Callable[[str], int]] = {}
    for name in ("o200k", "cl100k"):
        encoding = bpe_openai.get_encoding(f"{name}_base")
        exact[name] = lambda text, e=encoding: len(e.encode_ordinary(text))
    llama = Llama(args.llama_server, args.gguf) if args.llama_server and args.gguf else None
    if llama is not None:
        exact["gemma3"] = llama.count
    else:
        print("(no llama.cpp server given: Gemma's tokenizer is left out)", file=sys.stderr)
    try:
        _report(_texts(), exact, per_text=args.per_text)
    finally:
        if llama is not None:
            llama.close()
    _speed(exact)


def _report(
    texts: dict[str, list[tuple[str, str]]],
    exact: dict[str, Callable[[str], int]],
    *,
    per_text: bool,
) -> None:
    names = list(exact)
    print(f"{'class':<7}{'texts':>6}{'chars':>9}  " + "".join(f"{n:>22}" for n in names))
    print(" " * 24 + "".join(f"{'ratio all (min-max)':>22}" for _ in names))
    worst = (9.0, 0.0)
    for cls, items in texts.items():
        est_total = 0
        totals = dict.fromkeys(names, 0)
        lows = dict.fromkeys(names, 9.0)
        highs = dict.fromkeys(names, 0.0)
        for fname, text in items:
            est = _estimate(text)
            est_total += est
            line = []
            for n in names:
                count = exact[n](text)
                totals[n] += count
                ratio = est / count
                lows[n], highs[n] = min(lows[n], ratio), max(highs[n], ratio)
                line.append(f"{n} {count:,} ({ratio:.2f})")
            if per_text:
                print(f"    {fname}: estimate {est:,}; " + "; ".join(line))
        cells = ""
        for n in names:
            cells += f"{est_total / totals[n]:>10.2f} ({lows[n]:.2f}-{highs[n]:.2f})"
            worst = (min(worst[0], lows[n]), max(worst[1], highs[n]))
        chars = sum(len(t) for _, t in items)
        print(f"{cls:<7}{len(items):>6}{chars:>9,}  {cells}")
    print(f"every text, every tokenizer: estimate / exact within {worst[0]:.2f}-{worst[1]:.2f} "
          "(target 1.00-1.35)")  # fmt: skip


def _speed(exact: dict[str, Callable[[str], int]]) -> None:
    readme = (ROOT / "README.md").read_text("utf-8") * 3
    old = TokenEstimate()
    rounds = 20
    started = time.perf_counter()
    for _ in range(rounds):
        est = _estimate(readme)
    per_est = (time.perf_counter() - started) / rounds * 1000
    started = time.perf_counter()
    for _ in range(rounds):
        o200k = exact["o200k"](readme)
    per_o200k = (time.perf_counter() - started) / rounds * 1000
    print(f"3x README ({len(readme):,} chars): o200k {o200k:,} tokens in {per_o200k:.1f} ms; "
          f"cl100k {exact['cl100k'](readme):,}; estimate {est:,} in {per_est:.1f} ms "
          f"(ratio {est / o200k:.2f}); chars_per_token {old.chars_per_token:g}")  # fmt: skip


if __name__ == "__main__":
    main()
