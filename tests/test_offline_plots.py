"""The offline page for `dvc plots show`: generated from the pinned package, current, wired into
.dvc/config, and fit for DVC. (That it draws every plot in a browser with no network is checked
end to end in test_e2e_dvc.py.)"""

import configparser
import re
from importlib.metadata import version

import pytest
from dvc_render.html import HTML

from conftest import ROOT
from pipeline.charts import offline_page


@pytest.fixture(scope="module")
def current() -> str:
    return offline_page.current_page()  # ~3 s: vl-convert bundles the libraries


def test_pinned_package_is_the_installed_one():
    pins = re.findall(r'"(vl-convert-python[^"]*)"', (ROOT / "pyproject.toml").read_text())
    assert pins == [f"vl-convert-python=={version('vl-convert-python')}"]


def test_committed_page_is_current(current):
    committed = (ROOT / offline_page.PAGE).read_text(encoding="utf-8")
    assert committed == current, "stale: run python -m pipeline.charts.offline_page"


def test_check_mode_tells_a_stale_page(tmp_path, current, capsys, monkeypatch):
    monkeypatch.setattr(offline_page, "current_page", lambda: current)
    page = tmp_path / "offline.html"
    assert offline_page.main(["--output", str(page), "--check"]) == 1
    assert offline_page.main(["--output", str(page)]) == 0
    assert offline_page.main(["--output", str(page), "--check"]) == 0
    page.write_text(current.replace("Vega", "Vegas", 1))
    assert offline_page.main(["--output", str(page), "--check"]) == 1
    assert "is not current" in capsys.readouterr().out


def test_page_inlines_everything_and_keeps_dvc_placeholders(current):
    assert current.count("{plot_divs}") == 1
    assert "{scripts}" not in current  # DVC's CDN <script> tags would go there
    assert not re.search(r"<script[^>]*\ssrc=", current)
    assert "window.vegaEmbed=" in current and "window.vegaLite=" in current
    filled = HTML(current).with_element('<div id="x"></div>').embed()
    assert '<div id="x"></div>' in filled and "{plot_divs}" not in filled


def test_dvc_config_names_the_page():
    config = configparser.ConfigParser(inline_comment_prefixes=("#",))
    config.read(ROOT / ".dvc" / "config")
    template = config["plots"]["html_template"]  # DVC resolves it against .dvc/
    assert (ROOT / ".dvc" / template).resolve() == (ROOT / offline_page.PAGE).resolve()


@pytest.mark.parametrize(
    ("bundle", "message"),
    [
        ("var a = '</SCRIPT>';", "'</SCRIPT'"),
        # HTML's escaped script states: the page's body would be read as script text
        ("var note = '<!--';", "<!--"),
        ("var tag = '<Script>';", "<Script"),
        ("var a = '{plot_divs}';", "{plot_divs}"),
    ],
)
def test_a_bundle_that_cannot_be_inlined_is_refused(bundle, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        offline_page.page(bundle, "test")
