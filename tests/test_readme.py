"""The README's promises: its first commands, and a params table that matches the schema."""

from conftest import ROOT
from pipeline.config import params_table

README = (ROOT / "README.md").read_text()


def test_params_table_is_generated_from_the_schema():
    start = README.index("<!-- params-table:start -->\n") + len("<!-- params-table:start -->\n")
    end = README.index("<!-- params-table:end -->")
    assert README[start:end].strip() == params_table().strip()


def test_first_lines_are_install_and_repro_then_install_and_test():
    block = README.split("```bash\n", 1)[1].split("```", 1)[0].strip().splitlines()
    assert block[0].endswith("pip install -e . && dvc repro")
    assert block[1].endswith("pip install -e '.[test]' && pytest")


def test_ci_runs_the_readme_test_command():
    block = README.split("```bash\n", 1)[1].split("```", 1)[0].strip().splitlines()
    assert block[1] in (ROOT / ".ci/run").read_text()
