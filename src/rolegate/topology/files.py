"""The checks of a declared topology that read files: every model and draft file present,
and every draft sharing its target's vocabulary (``rolegate check``)."""

from __future__ import annotations

from rolegate.errors import PolicyProblem, RequestError
from rolegate.policy import Policy
from rolegate.policy.problems import error
from rolegate.topology.compat import compare_files


def file_problems(policy: Policy) -> list[PolicyProblem]:
    problems: list[PolicyProblem] = []
    for mid, model in sorted(policy.doc.models.items()):
        server = model.server
        if server is None:
            continue
        at = f"models.{mid}.server"
        target = policy.base_dir / server.gguf
        if not target.is_file():
            problems.append(error(f"{at}.gguf", f"no model file at {target}"))
        if server.draft is None:
            continue
        draft = policy.base_dir / server.draft.gguf
        if not draft.is_file():
            problems.append(error(f"{at}.draft.gguf", f"no draft file at {draft}"))
            continue
        if not target.is_file():
            continue
        try:
            result = compare_files(target, draft)
        except RequestError as exc:
            problems.append(error(f"{at}.draft.gguf", exc.message))
            continue
        for difference in result.differences:
            problems.append(error(f"{at}.draft", f"the draft cannot serve {mid}: {difference.why}"))
    return problems
