"""The what-if HTML report in a real headless Chromium, driven by Playwright; run by
tests/whatif.rs.

Usage: whatif_report.py REPORT_HTML REPORT_JSON SCREENSHOT_PNG
Environment: MALLQUEST_AXE_JS (axe-core's axe.min.js), MALLQUEST_CHROMIUM (default
/usr/bin/chromium).

Opens the page from its file and checks: it asks for nothing but itself (no network), its
totals table shows the JSON's totals, each store's change is the JSON's, its charts are
drawn, and axe-core finds no violation. Saves a screenshot. Any failed check raises: exit
status 1.
"""

import json
import os
import pathlib
import sys

from playwright.sync_api import sync_playwright

HTML, JSON, SHOT = sys.argv[1:4]
AXE = os.environ["MALLQUEST_AXE_JS"]
CHROMIUM = os.environ.get("MALLQUEST_CHROMIUM", "/usr/bin/chromium")


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def main():
    report = json.loads(pathlib.Path(JSON).read_text())
    url = pathlib.Path(HTML).resolve().as_uri()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            asked = []
            page.on("request", lambda r: asked.append(r.url))
            page.goto(url, wait_until="load")
            check(asked == [url], f"the report asked for more than itself: {asked}")
            for key, live in report["totals"]["live"].items():
                proposed = report["totals"]["proposed"][key]
                cells = page.locator(f'#totals-table tr[data-key="{key}"] td').all_inner_texts()
                check(
                    cells[:2] == [str(live), str(proposed)],
                    f"totals {key}: page shows {cells}, JSON says {live}, {proposed}",
                )
            rows = page.locator("#stores-table tbody tr").all()
            shown = {}
            for row in rows:
                cells = row.locator("td").all_inner_texts()
                shown[cells[0].split(" (")[0]] = int(cells[3])
            want = {s["id"]: s["change"] for s in report["stores"]}
            check(shown == want, f"stores: page shows {shown}, JSON says {want}")
            check(page.locator("svg[role=img]").count() >= 2, "the charts are missing")
            page.add_script_tag(path=AXE)
            violations = page.evaluate(
                """() => axe.run(document, {resultTypes: ['violations']}).then(r =>
                     r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help})))"""
            )
            check(violations == [], f"axe-core on the report: {violations}")
            page.screenshot(path=SHOT, full_page=True)
        finally:
            browser.close()
    print("whatif_report.py: the report shows the JSON's figures", file=sys.stderr)


if __name__ == "__main__":
    main()
