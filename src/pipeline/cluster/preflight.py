"""What would fail on every worker, refused on the driver before anything starts.

Each check fails in one line that names the fix. Workers see only the remotes: the git remote
they clone at the baseline commit and the DVC default remote they pull from and push to.
"""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.cluster.grid import SweepError
from pipeline.cluster.tools import Runner, checked, dvc_args, run_command

SHOWN = 3  # paths named in a message before "+N more"


@dataclass(frozen=True)
class Baseline:
    """The commit every experiment starts from and the remotes the workers use."""

    root: Path
    commit: str
    git_remote: str  # its name here, e.g. origin
    git_url: str  # what the workers clone
    dvc_remote: str
    notes: tuple[str, ...] = ()


def _some(paths: list[str]) -> str:
    more = f", +{len(paths) - SHOWN} more" if len(paths) > SHOWN else ""
    return ", ".join(paths[:SHOWN]) + more


def check_ray() -> None:
    if importlib.util.find_spec("ray") is None:
        raise SweepError("Ray is not installed: pip install -e '.[cluster]'")


def check_committed(root: Path, run: Runner) -> None:
    status = checked(run, ["git", "status", "--porcelain"], root, "git status")
    changed = [line[3:] for line in status.splitlines() if line.strip()]
    if changed:
        raise SweepError(
            f"uncommitted changes ({_some(changed)}): commit them first "
            "(workers clone the baseline commit, not this folder)"
        )


def clone_url(url: str, root: Path) -> str:
    """The remote's URL as a worker clones it: a relative local path made absolute."""
    scp_like = re.match(r"^[^/]+:", url) is not None and "://" not in url
    if "://" in url or scp_like or Path(url).is_absolute():
        return url
    return str((root / url).resolve())


def check_on_remote(root: Path, commit: str, remote: str, run: Runner) -> None:
    heads = checked(run, ["git", "ls-remote", "--heads", "--tags", remote], root, "git ls-remote")
    for sha in {line.split()[0] for line in heads.splitlines() if line.strip()}:
        if run(["git", "merge-base", "--is-ancestor", commit, sha], root).returncode == 0:
            return
    branch = checked(run, ["git", "rev-parse", "--abbrev-ref", "HEAD"], root, "git rev-parse")
    push = f"git push {remote} {branch.strip()}" if branch.strip() != "HEAD" else "git push"
    raise SweepError(
        f"baseline {commit[:7]} is not on git remote '{remote}' (workers clone it): {push}"
    )


def check_names_free(root: Path, remote: str, sweep_name: str, run: Runner) -> None:
    refs = checked(run, ["git", "ls-remote", remote, "refs/exps/*"], root, "git ls-remote")
    taken = re.compile(rf"/{re.escape(sweep_name)}-\d+$")
    if any(taken.search(line) for line in refs.splitlines()):
        raise SweepError(
            f"experiments named '{sweep_name}-<i>' are already on git remote '{remote}': "
            "choose another --name"
        )


def dvc_default_remote(root: Path, run: Runner) -> str:
    done = run(dvc_args("remote", "default", "--project"), root)
    name = done.stdout.strip() if done.returncode == 0 else ""
    if not name or " " in name:
        raise SweepError(
            "no DVC default remote in .dvc/config (workers pull and push through it): "
            "dvc remote add --project -d NAME URL, then commit .dvc/config"
        )
    return name


def missing_outputs(root: Path, run: Runner) -> list[str]:
    """Baseline outputs the DVC remote lacks (``dvc status --cloud``: new or missing)."""
    text = checked(run, dvc_args("status", "--cloud", "--json"), root, "dvc status --cloud")
    try:
        status = json.loads(text or "{}")
    except json.JSONDecodeError:
        raise SweepError(f"dvc status --cloud --json printed no JSON: {text[:80]!r}") from None
    return sorted(path for path, state in status.items() if state in ("new", "missing"))


def check_outputs(root: Path, dvc_remote: str, allow_recompute: bool, run: Runner) -> list[str]:
    missing = missing_outputs(root, run)
    if not missing:
        return []
    if allow_recompute:
        return [f"the DVC remote lacks {_some(missing)}: every worker recomputes them"]
    raise SweepError(
        f"DVC remote '{dvc_remote}' lacks {len(missing)} baseline output(s) ({_some(missing)}): "
        "dvc push, or --allow-recompute to let every worker recompute them"
    )


def preflight(
    root: Path,
    git_remote: str,
    sweep_name: str,
    allow_recompute: bool = False,
    run: Runner = run_command,
) -> Baseline:
    """Every check, cheapest first; the first that fails raises ``SweepError``."""
    check_ray()
    top = checked(run, ["git", "rev-parse", "--show-toplevel"], root, "git rev-parse")
    root = Path(top.strip())
    check_committed(root, run)
    commit = checked(run, ["git", "rev-parse", "HEAD"], root, "git rev-parse HEAD").strip()
    url = run(["git", "remote", "get-url", git_remote], root)
    if url.returncode != 0:
        raise SweepError(
            f"no git remote '{git_remote}' (workers clone it): git remote add {git_remote} URL"
        )
    check_on_remote(root, commit, git_remote, run)
    check_names_free(root, git_remote, sweep_name, run)
    dvc_remote = dvc_default_remote(root, run)
    notes = check_outputs(root, dvc_remote, allow_recompute, run)
    return Baseline(
        root, commit, git_remote, clone_url(url.stdout.strip(), root), dvc_remote, tuple(notes)
    )
