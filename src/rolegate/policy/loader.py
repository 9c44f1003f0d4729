"""Reading a policy file: parse (YAML, JSON or TOML), validate, check, compile."""

from __future__ import annotations

import json
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from rolegate.errors import PolicyInvalidError, PolicyLoadError, PolicyProblem
from rolegate.policy.checks import check_document
from rolegate.policy.compiled import Policy
from rolegate.policy.schema import PolicyDocument

DEFAULT_POLICY_RESOURCE = "default_policy.yaml"


def parse_text(text: str, fmt: str, source: str) -> Any:
    """Parse ``text`` as ``fmt`` ('yaml', 'json' or 'toml')."""
    try:
        if fmt == "json":
            return json.loads(text)
        if fmt == "toml":
            return tomllib.loads(text)
        if fmt == "yaml":
            return yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise PolicyLoadError(
            f"{source}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}"
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise PolicyLoadError(f"{source}: invalid TOML: {exc}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise PolicyLoadError(f"{source}{where}: invalid YAML: {problem}") from exc
    raise PolicyLoadError(f"{source}: unknown format {fmt!r}; use .yaml, .yml, .json or .toml")


def _format_for(path: Path) -> str:
    suffix = path.suffix.lower()
    return {".yaml": "yaml", ".yml": "yaml", ".json": "json", ".toml": "toml"}.get(suffix, suffix)


def _location(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def validate_data(data: Any, source: str) -> tuple[PolicyDocument, list[PolicyProblem]]:
    """Validate parsed data; raise with every error at once, return warnings."""
    if not isinstance(data, dict):
        raise PolicyInvalidError(
            source, [PolicyProblem("(top level)", "a policy is a mapping with 'version: 1'")]
        )
    try:
        doc = PolicyDocument.model_validate(data)
    except ValidationError as exc:
        problems = [
            PolicyProblem(_location(tuple(err["loc"])), _message(err)) for err in exc.errors()
        ]
        raise PolicyInvalidError(source, problems) from None
    problems = check_document(doc)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise PolicyInvalidError(source, errors)
    return doc, problems


def _message(err: Any) -> str:
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return "unknown key (not part of the policy format; check the spelling)"
    msg = str(err.get("msg", "invalid"))
    return msg.removeprefix("Value error, ")


def load_policy_text(text: str, fmt: str, source: str) -> Policy:
    data = parse_text(text, fmt, source)
    doc, warnings = validate_data(data, source)
    return Policy(doc, source=source, warnings=warnings)


def load_policy(path: str | Path) -> Policy:
    """Load, validate and compile the policy at ``path``; raise PolicyError if unusable."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyLoadError(f"{p}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyLoadError(f"{p}: cannot read: {exc}") from exc
    return load_policy_text(text, _format_for(p), str(p))


def default_policy_text() -> str:
    return resources.files("rolegate.policy").joinpath(DEFAULT_POLICY_RESOURCE).read_text("utf-8")


def load_default_policy() -> Policy:
    """The embedded policy: one local Ollama, used when no policy file is given."""
    return load_policy_text(default_policy_text(), "yaml", "<embedded default policy>")
