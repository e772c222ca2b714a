"""The self-contained HTML report (qdm-report/index.html): content, escaping, no network,
and a real headless Chromium that opens a damaged feature's drill-down.
"""

from __future__ import annotations

import re
import shutil

import pytest

from tests.stream.test_drilldown import tiny_report

VERDICTS = [("rtn-int4 survived >= 90%", False, "55.3% < 90%")]
HOSTILE = "<script>alert(1)</script>"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


def worst(report):
    """The most damaged feature of rtn-int4 that has a context on both sides, else the first."""
    drilled = report.audit.conditions["rtn-int4"].drilldown
    return next((f for f in drilled if f.compressed_top), drilled[0])


def with_token(report, feature, token: str):
    """``report`` with the first token of ``feature``'s top reference context replaced."""
    condition = report.audit.conditions["rtn-int4"]
    context = feature.reference_top[0]
    context = context.model_copy(update={"tokens": [token, *context.tokens[1:]]})
    changed = feature.model_copy(update={"reference_top": [context, *feature.reference_top[1:]]})
    drilldown = [changed if f is feature else f for f in condition.drilldown]
    conditions = {
        **report.audit.conditions,
        "rtn-int4": condition.model_copy(update={"drilldown": drilldown}),
    }
    return report.model_copy(
        update={"audit": report.audit.model_copy(update={"conditions": conditions})}
    )


def written(tmp_path, monkeypatch, report=None):
    """The gate's output files of the tiny report in ``tmp_path/qdm-report``."""
    from pytest_qdm.gate.outputs import write_outputs
    from pytest_qdm.options import QdmOptions
    from pytest_qdm.schema.gate import Verdict

    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    out = tmp_path / "qdm-report"
    verdicts = [Verdict(*v) for v in VERDICTS]
    write_outputs(report or tiny_report(), verdicts, QdmOptions(report_dir=str(out)))
    return out


def test_html_holds_tables_plots_and_escaped_contexts(tmp_path, monkeypatch):
    from html import escape

    from pytest_qdm.report.html import element_id

    report = tiny_report()
    feature = worst(report)
    out = written(tmp_path, monkeypatch, with_token(report, feature, HOSTILE))
    page = (out / "index.html").read_text(encoding="utf-8")
    assert HOSTILE not in page and escape(HOSTILE) in page
    assert "<script" not in page  # no script at all
    for text in ["Survival", "Findings", "Gate verdicts", "55.3% &lt; 90%", "Most damaged"]:
        assert text in page
    assert f'id="{element_id("rtn-int4", feature.feature)}"' in page
    for context in [*feature.reference_top[1:], *feature.compressed_top]:
        for token in context.tokens:
            assert escape(token) in page
    # plots embedded, nothing fetched: every src and href is a data URI or a page link
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs and page.count('src="data:image/png;base64,') == len(pngs)
    external = re.findall(r'(?:src|href)="(?!data:|https://neuronpedia\.org/)[^"]*"', page)
    assert external == []


def chrome(tmp_path, monkeypatch):
    """A headless Chromium under chromedriver that keeps the console log; skips without."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    from selenium.webdriver.chrome.service import Service

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip("chromium/chromedriver missing (apt-get install chromium chromium-driver)")
    monkeypatch.setenv("SE_AVOID_STATS", "true")  # selenium-manager: no network
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    options.add_argument("--window-size=1280,2000")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


def test_chromium_opens_a_damaged_features_drilldown(tmp_path, monkeypatch):
    from selenium.webdriver.common.by import By

    from pytest_qdm.report._drilldown import visible
    from pytest_qdm.report.html import element_id

    report = tiny_report()
    feature = worst(report)
    out = written(tmp_path, monkeypatch)
    driver = chrome(tmp_path, monkeypatch)
    try:
        driver.get((out / "index.html").as_uri())
        details = driver.find_element(By.ID, element_id("rtn-int4", feature.feature))
        rows = details.find_elements(By.CSS_SELECTOR, "tr.context")
        assert len(rows) == len(feature.reference_top) + len(feature.compressed_top)
        assert not rows[0].is_displayed()  # folded until opened
        details.find_element(By.TAG_NAME, "summary").click()
        assert all(row.is_displayed() for row in rows)
        shown = rows[0].find_elements(By.TAG_NAME, "td")[0].text
        assert shown == "".join(visible(t) for t in feature.reference_top[0].tokens)
        assert driver.execute_script(
            "return [...document.images].every(i => i.complete && i.naturalWidth > 0)"
        )
        driver.execute_script("arguments[0].scrollIntoView()", details)
        screenshot = tmp_path / "drilldown.png"
        assert driver.save_screenshot(str(screenshot))
        shutil.copy(screenshot, out / "drilldown.png")
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
    finally:
        driver.quit()
