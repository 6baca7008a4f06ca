"""The README's promises: its first commands, and a params table that matches the schema."""

from conftest import ROOT
from pipeline.tools.params_table import params_table, with_params_table

README = (ROOT / "README.md").read_text()
PARAMS_PAGE = (ROOT / "docs" / "params.md").read_text()


def test_params_table_is_generated_from_the_schema():
    start = PARAMS_PAGE.index("<!-- params-table:start -->\n")
    end = PARAMS_PAGE.index("<!-- params-table:end -->")
    table = PARAMS_PAGE[start + len("<!-- params-table:start -->\n") : end]
    assert table.strip() == params_table().strip()
    # What `python -m pipeline.tools.params_table docs/params.md` writes:
    assert with_params_table(PARAMS_PAGE) == PARAMS_PAGE


def test_the_readme_stays_short_and_links_every_topic_page():
    assert len(README.splitlines()) <= 200
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"](docs/{page.name})" in README, f"the README does not link docs/{page.name}"


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

    for doc in (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))):
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
    from pipeline.core.config import Params, load_params

    assert load_params(ROOT / "params.yaml") == Params()
