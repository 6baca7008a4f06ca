"""Every stage runs the code of the checkout it runs in, whatever `pip install -e` points at.

A queued or `--temp` experiment runs in a temporary copy of the repository, and a cluster worker
in its own clone; with an editable install, a plain `import pipeline` would load the workspace's
(or another checkout's) code while `dvc.lock` records the copy's hashes.
"""

import os
import shutil

from conftest import FAST_PARAMS, dvc, make_project_copy, run

MARKER = "evaluate code of the experiment's own copy"


def test_a_queued_experiment_runs_its_own_code_not_the_workspace(tmp_path):
    root = make_project_copy(tmp_path / "project", FAST_PARAMS)
    dvc(root, "repro", "evaluate")  # the stages up to the edited one: enough, and faster
    run(root, "git", "add", "-A")
    run(root, "git", "commit", "-qm", "first run")
    # As after `pip install -e .` in this clone: its workspace src/ is importable everywhere.
    os.environ["PYTHONPATH"] = str(root / "src")
    try:
        evaluate = root / "src/pipeline/evaluate/metrics.py"
        original = evaluate.read_text()
        evaluate.write_text(original + f"\nprint({MARKER!r}, flush=True)\n")
        queue = ["exp", "run", "--queue", "evaluate", "-n", "edited"]
        dvc(root, *queue, "-S", "evaluate.batch_size=256")
        evaluate.write_text(original)  # the workspace no longer has the edit; the experiment does
        dvc(root, "queue", "start")
        logs = dvc(root, "queue", "logs", "--follow", "edited").stdout
        assert "Running stage 'evaluate'" in logs, logs
        assert MARKER in logs, logs

        # The other way round: another checkout's edited code is importable, and a --temp
        # experiment here must not run it.
        other = tmp_path / "other" / "src"
        shutil.copytree(root / "src", other)
        (other / "pipeline/evaluate/metrics.py").write_text(original + f"\nprint({MARKER!r})\n")
        os.environ["PYTHONPATH"] = str(other)
        temp = ["exp", "run", "--temp", "evaluate", "-n", "temp"]
        result = dvc(root, *temp, "-S", "evaluate.batch_size=128")
        assert "Running stage 'evaluate'" in result.stdout, result.stdout
        assert MARKER not in result.stdout + result.stderr
    finally:
        os.environ.pop("PYTHONPATH", None)
