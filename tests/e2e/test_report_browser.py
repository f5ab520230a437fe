"""`fiqa report` from the command line, its page opened in a real headless Chromium.

Set FIQA_REPORT_SCREENSHOT=docs/report-screenshot.png to also refresh the documentation's
screenshot from this run.
"""

import json
import os
import shutil
from pathlib import Path

import pytest

from jobs.cli import main
from pipeline.catalog import open_catalog
from tests.browser import BINARY, MISSING, Browser
from tests.pipeline.test_report import HEADINGS, TABLE, edc_result, scored_faces

EXPECTED_HEADINGS = (*HEADINGS, "Selection", "Error versus discard (EDC)")
CHARTS = 5
THUMBNAILS = 72


@pytest.fixture
def browser():
    if shutil.which(BINARY) is None:
        pytest.fail(MISSING, pytrace=False)
    with Browser() as session:
        yield session


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("FIQA_HOME", str(tmp_path / "home"))
    return tmp_path


def headings(browser: Browser) -> list[str]:
    return browser.evaluate(
        "Array.from(document.querySelectorAll('h1, h2')).map(h => h.textContent)"
    )


def test_the_browser_helper_sees_what_goes_wrong(tmp_path, browser):
    page = tmp_path / "broken.html"
    page.write_text(
        "<!DOCTYPE html><title>t</title><h1>Broken</h1><img src='absent.png'>"
        "<script>console.error('logged'); throw new Error('thrown')</script>"
    )
    browser.open(page.as_uri())
    assert headings(browser) == ["Broken"]
    assert browser.broken_images() == ["absent.png"]
    assert browser.errors.console == ["logged"]
    assert "thrown" in browser.errors.exceptions[0]
    assert any("absent.png" in entry for entry in browser.errors.log)


@pytest.mark.slow
def test_report_renders_with_every_image_and_no_console_errors(home, browser, capsys):
    catalog = open_catalog()
    scored_faces(home, catalog, identities=40, per_identity=8)
    rules = ["--model-id", "m1", "--min-quality", "0.3", "--min-images-per-identity", "3"]
    assert main(["filter", "--table", TABLE, *rules, "--out", "clean"]) == 0
    (home / "eval.json").write_text(json.dumps(edc_result()))
    out = home / "report"
    args = ["--table", TABLE, "--selection", "clean", "--eval", str(home / "eval.json")]
    assert main(["report", *args, "--out", str(out)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.endswith(str(out / "index.html"))

    browser.open((out / "index.html").as_uri())
    assert headings(browser) == list(EXPECTED_HEADINGS)
    assert browser.evaluate("document.images.length") == CHARTS + THUMBNAILS
    assert browser.broken_images() == []
    assert browser.errors.all() == []
    shot = home / "report.png"
    browser.screenshot(shot)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if target := os.environ.get("FIQA_REPORT_SCREENSHOT"):
        browser.screenshot(Path(target), scale=0.7)
