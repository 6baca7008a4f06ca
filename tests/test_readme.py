"""The README's promises: its first commands, and a params table that matches the schema."""

from conftest import ROOT
from pipeline.config import params_table, with_params_table

README = (ROOT / "README.md").read_text()


def test_params_table_is_generated_from_the_schema():
    start = README.index("<!-- params-table:start -->\n") + len("<!-- params-table:start -->\n")
    end = README.index("<!-- params-table:end -->")
    assert README[start:end].strip() == params_table().strip()
    assert with_params_table(README) == README  # what `python -m pipeline.config --readme` writes


def test_first_lines_are_install_and_repro_then_install_and_test():
    block = README.split("```bash\n", 1)[1].split("```", 1)[0].strip().splitlines()
    assert block[0].endswith("pip install -e . && dvc repro")
    assert block[1].endswith("pip install -e '.[test]' && pytest")


def test_ci_runs_the_readme_test_command():
    block = README.split("```bash\n", 1)[1].split("```", 1)[0].strip().splitlines()
    assert block[1] in (ROOT / ".ci/run").read_text()


def test_docs_point_only_to_files_in_the_repository():
    """No design notes or paths from outside the repository: a clone has only what git tracks."""
    import re

    for doc in (ROOT / "README.md", ROOT / "docs" / "architecture.md"):
        text = doc.read_text()
        assert "DESIGN.md" not in text and "STYLE.md" not in text, doc
        for target in re.findall(r"\]\(([^)#]+)\)", text):
            if "://" in target:
                continue
            assert (doc.parent / target).exists(), f"{doc.name} links to missing {target}"


def test_the_cpu_only_install_line_takes_torch_from_the_cpu_index():
    lines = [line for line in README.splitlines() if "download.pytorch.org/whl/cpu" in line]
    assert lines and "pip install torch torchvision --index-url" in lines[0]
    assert lines[0].index("whl/cpu") < lines[0].index("pip install -e .")


def test_params_yaml_ships_the_defaults_the_table_documents():
    from pipeline.config import Params, load_params

    assert load_params(ROOT / "params.yaml") == Params()
