"""Links into the DVC cache wherever DVC's config puts it (`dvc cache dir`), and no other."""

from pathlib import Path

import numpy as np
import pytest

from pipeline.prepared import shards
from pipeline.prepared.links import cache_dir, dvc_caches
from pipeline.prepared.shards import ShardError, open_split, write_split


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project with a .dvc folder, and empty global and system DVC configs of its own."""
    for level in ("GLOBAL", "SYSTEM"):
        (tmp_path / level).mkdir()
        monkeypatch.setenv(f"DVC_{level}_CONFIG_DIR", str(tmp_path / level))
    (tmp_path / "project" / ".dvc").mkdir(parents=True)
    return tmp_path / "project"


def dvc_reads(project):
    """The cache folder as DVC itself resolves it from the same config files."""
    from dvc.config import Config

    return Config(str(project / ".dvc"))["cache"].get("dir")


LAYOUTS = {
    "default": {},
    "relative": {"config": "[core]\n    autostage = true\n[cache]\n    dir = ../../big/cache\n"},
    "local wins": {
        "config": "[cache]\n    dir = ../../big/cache\n    type = symlink\n",
        "config.local": "['remote \"store\"']\n    url = /nowhere\n[cache]\n    dir = {abs}\n",
    },
    "global": {"../../GLOBAL/config": "[cache]\n    dir = ../shared-cache\n"},
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_cache_folder_is_where_dvc_config_puts_it(project, layout):
    for name, text in LAYOUTS[layout].items():
        (project / ".dvc" / name).write_text(text.format(abs=project.parent / "abs-cache"))
    found = cache_dir(project)
    expected = dvc_reads(project)
    assert found == (project / ".dvc" / "cache" if expected is None else Path(expected))
    assert dvc_caches(project / "data" / "prepared") == [found, found]


def test_shards_linked_into_a_cache_outside_the_project_are_read_others_refused_unread(
    project, monkeypatch
):
    cache = project.parent / "big" / "cache"
    (project / ".dvc" / "config").write_text("[cache]\n    dir = ../../big/cache\n")
    folder = project / "data" / "prepared"
    folder.mkdir(parents=True)
    images = np.arange(6 * 4, dtype=np.uint8).reshape(6, 1, 2, 2)
    written = write_split(folder, "test", images, np.arange(6) % 2, 4, seed=0)
    first = open_split(folder, "test", written.entries[:1], (1, 2, 2), 2, 4).load()
    for number, entry in enumerate(written.entries):  # what DVC's symlink cache type leaves
        target = (cache if number == 0 else project.parent / "elsewhere") / entry.file
        target.parent.mkdir(parents=True, exist_ok=True)
        (folder / entry.file).replace(target)
        (folder / entry.file).symlink_to(target)
    hashed = []
    monkeypatch.setattr(shards, "sha256_file", lambda path: hashed.append(path) or "0")
    with pytest.raises(ShardError, match=r"test-00001.safetensors is a symbolic link to .*else"):
        open_split(folder, "test", written.entries, (1, 2, 2), 2, 6)
    assert hashed == []  # refused before any byte was read through it
    one = open_split(folder, "test", written.entries[:1], (1, 2, 2), 2, 4, verify=False)
    np.testing.assert_array_equal(one.load()[0], first[0])


def test_a_dvc_added_image_folder_linked_into_a_cache_outside_the_project_is_scanned(project):
    from pipeline.sources.errors import DataSourceError
    from pipeline.sources.imagefolder import scan

    root, cache = project / "data" / "raw", project.parent / "big" / "cache"
    (project / ".dvc" / "config").write_text(f"[cache]\n    dir = {cache}\n")  # absolute
    for name in ("a/1.png", "b/2.png"):  # what `dvc add data/raw` leaves with cache.type symlink
        (cache / name).parent.mkdir(parents=True, exist_ok=True)
        (cache / name).write_bytes(b"png")
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).symlink_to(cache / name)
    assert scan(root) == (["a", "b"], ["a/1.png", "b/2.png"], [0, 1])
    (project.parent / "elsewhere.png").write_bytes(b"png")
    (root / "b" / "3.png").symlink_to(project.parent / "elsewhere.png")
    with pytest.raises(DataSourceError, match=r"b/3.png -> .*elsewhere.png"):
        scan(root)
