"""Write the intents' examples of the default and example policies from the shared pool.

Run: python benchmarks/copy_examples.py [--cap N]

The pool is benchmarks/data/intent_examples.yaml (written as training examples) and
benchmarks/data/intents_labelled.jsonl (the labelled set). Each policy's intents get the
fine labels that intent_mapping.yaml maps to them, alternating written and labelled ones:
a list for one fine label, a kind per fine label for several (up to ``--cap`` examples
per intent, shared equally among its kinds). bench_classify.py measures with folds: a task is
never classified by a policy whose examples contain it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "benchmarks" / "data"
DEFAULT_POLICY = ROOT / "src" / "rolegate" / "policy" / "default_policy.yaml"


def pool() -> dict[str, list[str]]:
    """Per fine label: written and labelled examples, interleaved."""
    written: dict[str, list[str]] = yaml.safe_load((DATA / "intent_examples.yaml").read_text())
    labelled: dict[str, list[str]] = {label: [] for label in written}
    for line in (DATA / "intents_labelled.jsonl").read_text("utf-8").splitlines():
        item = json.loads(line)
        labelled[item["label"]].append(item["text"])
    out = {}
    for label, texts in written.items():
        mixed = itertools.chain.from_iterable(itertools.zip_longest(texts, labelled[label]))
        out[label] = [text for text in mixed if text is not None]
    return out


def examples_for(
    labels: list[str], source: dict[str, list[str]], cap: int
) -> list[str] | dict[str, list[str]]:
    """A list for one fine label; kinds (one per fine label) for several."""
    if len(labels) == 1:
        return source[labels[0]][:cap]
    share = cap // len(labels)
    return {label: source[label][:share] for label in sorted(labels)}


def rewrite(path: Path, intents: dict[str, list[str] | dict[str, list[str]]]) -> None:
    """Replace each named intent's 'examples:' block in place (the rest stays as written)."""
    lines = path.read_text("utf-8").splitlines()
    out: list[str] = []
    current = None
    index = 0
    while index < len(lines):
        line = lines[index]
        head = re.match(r"^  ([A-Za-z0-9_.-]+):\s*$", line)
        if head:
            current = head.group(1)
        if re.match(r"^\S", line):
            current = None
        block = re.match(r"^(\s+)examples:\s*$", line)
        if block and current in intents:
            indent = block.group(1)
            out.append(line)
            index += 1
            while index < len(lines) and lines[index].startswith(indent + "  "):
                index += 1
            out.extend(_yaml_lines(intents[current], indent + "  "))
            continue
        out.append(line)
        index += 1
    path.write_text("\n".join(out) + "\n", "utf-8")


def _yaml_lines(examples: list[str] | dict[str, list[str]], indent: str) -> list[str]:
    if isinstance(examples, list):
        return [f"{indent}- {json.dumps(text, ensure_ascii=False)}" for text in examples]
    out = []
    for kind, texts in examples.items():
        out.append(f"{indent}{kind}:")
        out.extend(_yaml_lines(texts, indent + "  "))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cap", type=int, default=1000)
    args = parser.parse_args()
    source = pool()
    mapping: dict[str, dict[str, str]] = yaml.safe_load((DATA / "intent_mapping.yaml").read_text())
    for name, labels in mapping.items():
        path = DEFAULT_POLICY if name == "default" else ROOT / "examples" / "policies" / name
        intents: dict[str, list[str]] = {}
        for label, intent in labels.items():
            intents.setdefault(intent, []).append(label)
        rewrite(path, {i: examples_for(ls, source, args.cap) for i, ls in intents.items()})
        loaded = yaml.safe_load(path.read_text("utf-8"))
        counts = {i: _count(loaded["intents"][i].get("examples", [])) for i in intents}
        print(f"{path.relative_to(ROOT)}: {counts}")


def _count(examples: list[str] | dict[str, list[str]]) -> int | dict[str, int]:
    return {k: len(v) for k, v in examples.items()} if isinstance(examples, dict) else len(examples)


if __name__ == "__main__":
    main()
