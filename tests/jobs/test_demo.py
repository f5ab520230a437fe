"""`fiqa demo` only ever replaces a folder it made itself."""

import pytest

from jobs.demo import MARKER, DemoError, prepare


def test_demo_replaces_only_its_own_folder(tmp_path):
    out = tmp_path / "demo"
    prepare(out)
    (out / "old-result").write_text("from the last run")
    prepare(out)
    assert sorted(p.name for p in out.iterdir()) == [MARKER]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    with pytest.raises(DemoError, match="not made by the demo"):
        prepare(mine)
    assert (mine / "thesis.tex").read_text() == "precious"
