"""`dvc plots show` as a data scientist uses it: offline, per-target titles, reference diagonals.

The project's own ``dvc.yaml``, ``.dvc/config`` and ``.dvc/plots/`` are copied into a fresh DVC
project (``dvc init --no-scm``) with the fixture params and small curve tables written by
:func:`pipeline.train.plots.curve_frames`; ``dvc plots show`` renders the page, which headless
Chromium must then draw with no network request and no console error.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.headline import plots_folder
from pipeline.train.plots import curve_frames
from tests.fixture_params import copy_fixture_params, fixture_raw

PROJECT = Path(__file__).resolve().parents[1]
DVC = Path(sys.executable).with_name("dvc")


def _dvc(root: Path, *args: str) -> str:
    result = subprocess.run(
        [str(DVC), *args], cwd=root, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def plots_page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``dvc plots show`` of two targets' curves in a copy of the project's DVC set-up."""
    root = tmp_path_factory.mktemp("plots-project")
    _dvc(root, "init", "--no-scm", "-q")
    shutil.copy(PROJECT / "dvc.yaml", root / "dvc.yaml")
    shutil.copy(PROJECT / ".dvc" / "config", root / ".dvc" / "config")
    shutil.copytree(PROJECT / ".dvc" / "plots", root / ".dvc" / "plots", dirs_exist_ok=True)
    copy_fixture_params(root)
    rng = np.random.default_rng(3)
    for target in fixture_raw()["targets"]:
        p = rng.beta(1, 12, 5_000)
        y = (rng.random(p.size) < p).astype(np.float64)
        folder = plots_folder(root, target)
        folder.mkdir(parents=True)
        for name, frame in curve_frames(y, p).items():
            frame.write_csv(folder / f"{name}.csv", float_precision=6)
    _dvc(root, "plots", "show", "-o", "dvc_plots")
    return root / "dvc_plots" / "index.html"


def test_plots_page_needs_no_network(plots_page: Path) -> None:
    html = plots_page.read_text()
    assert "cdn.jsdelivr.net" not in html
    assert "<script src=" not in html.replace(" ", "")
    assert "vegaEmbed" in html and "vega-lite@5" in html


def test_plots_have_per_target_titles_and_diagonals(plots_page: Path) -> None:
    html = plots_page.read_text()
    for target in fixture_raw()["targets"]:
        for curve in ("ROC", "Calibration", "Precision-recall", "Cumulative gain"):
            assert f"{curve}, {target} (test split)" in html
    assert html.count('"strokeDash": [4, 4]') + html.count('"strokeDash":[4,4]') >= 6


def test_plot_entries_are_in_git_not_the_cache() -> None:
    stages = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]
    for name in ("train", "audit"):
        stage = stages[name]["do"]
        for kind in ("metrics", "plots"):
            for entry in stage.get(kind, []):
                path, options = next(iter(entry.items()))
                assert path.startswith("metrics/") and options["cache"] is False, path
        assert not [out for out in stage["outs"] if str(out).startswith("metrics/")]
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "metrics/x/train.json"], cwd=PROJECT, check=False
    )
    assert ignored.returncode == 1  # not ignored: committed with the code


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_plots_page_renders_offline_in_chromium(plots_page: Path, tmp_path: Path) -> None:
    from tests.test_report_browser import DevToolsPipe

    browser = DevToolsPipe(tmp_path / "chromium-profile")
    try:
        page = next(
            t for t in browser.send("Target.getTargets")["targetInfos"] if t["type"] == "page"
        )
        session = browser.send(
            "Target.attachToTarget", {"targetId": page["targetId"], "flatten": True}
        )["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.send(f"{domain}.enable", session=session)
        browser.send("Page.navigate", {"url": plots_page.as_uri()}, session=session)
        browser.wait_for("Page.loadEventFired", timeout=60)
        time.sleep(2.0)  # vega-embed renders asynchronously
        drawn = browser.send(
            "Runtime.evaluate",
            {
                "expression": "document.querySelectorAll('.vega-embed canvas, .vega-embed svg')"
                ".length",
                "returnByValue": True,
            },
            session=session,
        )["result"]["value"]
    finally:
        browser.close()
    requests = browser.requested_urls()
    errors = browser.page_errors(console=False)
    assert errors == [], errors
    assert [url for url in requests if not url.startswith(("file:", "data:"))] == []
    assert drawn >= 2 * 4  # every curve of both targets
