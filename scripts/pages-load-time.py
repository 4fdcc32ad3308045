"""Navigation-to-load time of /board and /me/{user_id} in headless Chromium, against a
running instance (for example `mallquest demo --serve 127.0.0.1:8080 ...`), and optional
screenshots. Run with the Python that scripts/install-browser.sh sets up:

  eval "$(scripts/install-browser.sh)"
  "$MALLQUEST_BROWSER_PYTHON" scripts/pages-load-time.py http://127.0.0.1:8080 USER_ID \
      [--runs 10] [--token T] [--screenshots DIR]

Each run is a fresh browser context (no cache). Prints, per page, the median and the worst
of: navigation start to the load event, and to the first data shown (the pages mark
`mq-data` when their first /v1 answers are on screen).
"""

import argparse
import json
import os
import statistics
import urllib.parse

from playwright.sync_api import sync_playwright

ap = argparse.ArgumentParser()
ap.add_argument("base")
ap.add_argument("user")
ap.add_argument("--runs", type=int, default=10)
ap.add_argument("--token")
ap.add_argument("--screenshots")
ap.add_argument("--chromium", default=os.environ.get("MALLQUEST_CHROMIUM", "/usr/bin/chromium"))
args = ap.parse_args()

pages = {
    "board": ("/board", {"width": 1920, "height": 1080}, False),
    "me": ("/me/" + urllib.parse.quote(args.user, safe=""), {"width": 1280, "height": 900}, True),
}
fragment = "#token=" + urllib.parse.quote(args.token) if args.token else ""
out = {}
with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
    for name, (path, viewport, full) in pages.items():
        load, data = [], []
        for i in range(args.runs):
            # bypass_csp: Playwright evaluates its waits as strings, which the pages' CSP forbids.
            ctx = browser.new_context(viewport=viewport, bypass_csp=True)
            page = ctx.new_page()
            page.goto(args.base + path + fragment)
            page.wait_for_function("Number(document.body.dataset.updates || 0) > 0", timeout=30_000)
            t = page.evaluate(
                """() => [performance.getEntriesByType('navigation')[0].loadEventEnd,
                          performance.getEntriesByName('mq-data')[0].startTime]"""
            )
            load.append(t[0])
            data.append(t[1])
            if args.screenshots and i == args.runs - 1:
                os.makedirs(args.screenshots, exist_ok=True)
                page.screenshot(path=os.path.join(args.screenshots, f"page-{name}.png"), full_page=full)
            ctx.close()
        out[name] = {
            "runs": args.runs,
            "load_ms_median": round(statistics.median(load), 1),
            "load_ms_max": round(max(load), 1),
            "data_ms_median": round(statistics.median(data), 1),
            "data_ms_max": round(max(data), 1),
        }
    browser.close()
print(json.dumps(out, indent=1))
