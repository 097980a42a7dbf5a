"""The report artifacts as Prefect's UIs show them, measured in a real browser (Chromium).

Prefect 3.4+ serves two UIs: V2, the default, under /v2, and the classic one (V1) at the root.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
)
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.comparison import gd_comparison
from flows.serving import local_server
from flows.sweep import gd_sweep
from tasks.params import RunParams, SweepParams
from tasks.report.style import DPI, TEXT
from tasks.report.sweep_tables import SWEEP_KEY, sweep_caption
from tasks.report.tables import COMPARISON_KEY, caption

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
CHROMIUM = shutil.which("chromium")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium)"),
]

UIS = {"v2": "/v2", "v1": ""}  # the path of an artifact's page under the server, per UI
WINDOW = {"width": 1600, "height": 1200}

# What the page shows: the figure's size on screen and in its file, the width of each table
# and of the markdown around it, and each header cell's text height against one line.
MEASURE = """() => {
  const img = document.querySelector('img[alt]');
  const box = img.parentElement.closest('div');
  const lines = th => {
    const s = getComputedStyle(th);
    const text = th.clientHeight - parseFloat(s.paddingTop) - parseFloat(s.paddingBottom);
    return text / parseFloat(s.lineHeight);
  };
  return {
    shown: img.getBoundingClientRect().width, natural: img.naturalWidth, alt: img.alt,
    box: box.clientWidth,
    tables: [...document.querySelectorAll('table')].map(t => t.getBoundingClientRect().width),
    headers: [...document.querySelectorAll('th')].map(th => [th.innerText, lines(th)]),
    text: document.body.innerText,
  };
}"""
LOADED = "() => [...document.querySelectorAll('img[alt]')].some(i => i.complete && i.naturalWidth)"


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A comparison (one method diverges) and a small sweep, reported to a server that serves
    the UIs; yields its address, the artifacts' ids and their captions."""
    data_dir = str(tmp_path_factory.mktemp("data"))
    run = RunParams(preset="tutorial", data_dir=data_dir)
    sweep = SweepParams(lrs=[0.01, 0.2], batch_sizes=[1, 10, "n"], seeds=[0, 1], data_dir=data_dir)
    with local_server() as api, temporary_settings({PREFECT_API_URL: api}):
        runs = [
            gd_comparison(params=run, return_state=True).state_details.flow_run_id,
            gd_sweep(params=sweep, return_state=True).state_details.flow_run_id,
        ]
        with get_client(sync_client=True) as client:  # these runs' (the database may be shared)
            found = client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(any_=[COMPARISON_KEY, SWEEP_KEY])
                ),
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=runs)),
            )
        yield {
            "base": api.removesuffix("/api"),
            "ids": {a.key: a.id for a in found},
            "captions": {
                COMPARISON_KEY: caption(run, "synthetic"),
                SWEEP_KEY: sweep_caption(sweep),
            },
        }


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def open_artifact(browser: Any, artifacts: dict[str, Any], key: str, ui: str) -> dict[str, Any]:
    """Open the artifact's page in the UI at a 1600x1200 window; measure what it shows."""
    page = browser.new_page(viewport=WINDOW)
    try:
        page.goto(f"{artifacts['base']}{UIS[ui]}/artifacts/artifact/{artifacts['ids'][key]}")
        page.wait_for_function(LOADED, timeout=60_000)
        page.wait_for_selector("th", timeout=30_000)
        return page.evaluate(MEASURE)
    finally:
        page.close()


@pytest.mark.parametrize("ui", list(UIS))
@pytest.mark.parametrize("key", [COMPARISON_KEY, SWEEP_KEY])
def test_artifact_reads_well_in_both_uis(
    browser: Any, artifacts: dict[str, Any], key: str, ui: str
) -> None:
    shown = open_artifact(browser, artifacts, key, ui)
    # the figure's smallest text, in screen pixels
    smallest = TEXT * DPI / 72 * shown["shown"] / shown["natural"]
    assert smallest >= 10.0, f"the figure's smallest text is {smallest:.1f} px tall in {ui}"
    for width in shown["tables"]:
        assert width <= shown["box"] + 0.5, f"a table {width:.0f} px wide in {shown['box']} px"
    wrapped = [text for text, lines in shown["headers"] if lines > 1.5]
    assert not wrapped, f"headers wrap in {ui}: {wrapped}"
    # the caption is drawn in the figure (its alternative text), never again as text
    text = artifacts["captions"][key]
    assert shown["alt"] == text
    assert text not in shown["text"]
    assert text[:40] not in shown["text"]
