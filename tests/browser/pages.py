"""The pages in a real headless Chromium, driven by Playwright; run by tests/pages.rs.

Usage: pages.py BASE_URL TOKEN USER_ID ARTIFACTS_DIR
Environment: MALLQUEST_AXE_JS (axe-core's axe.min.js), MALLQUEST_CHROMIUM (default
/usr/bin/chromium).

Talks to the Rust test over stdin/stdout: it prints `need-more` once /board is checked,
the test produces receipts that make a new leader, waits until they are folded, and
answers `more <user_id>`; the open board must then show that leader by its own polling.
Prints `result <json>` (load times) at the end. Any failed check raises: exit status 1.
"""

import json
import os
import sys
import urllib.parse
import urllib.request

from playwright.sync_api import sync_playwright

BASE, TOKEN, USER, ARTIFACTS = sys.argv[1:5]
AXE = os.environ["MALLQUEST_AXE_JS"]
CHROMIUM = os.environ.get("MALLQUEST_CHROMIUM", "/usr/bin/chromium")
WAIT_MS = 20_000


def log(*a):
    print("pages.py:", *a, file=sys.stderr, flush=True)


def api(path, token=TOKEN):
    req = urllib.request.Request(BASE + path)
    if token:
        req.add_header("Authorization", "Bearer " + token)
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


def api_status(path, token=None):
    req = urllib.request.Request(BASE + path)
    if token:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def plain(text):
    """A figure as shown ("1,234.50") as the API writes it ("1234.50")."""
    return text.replace(",", "").strip()


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def check_eq(got, want, what):
    if got != want:
        raise AssertionError(f"{what}: page shows {got!r}, API says {want!r}")


def axe(page, name):
    """axe-core over the whole page; fails on every violation (serious and critical
    included, minor ones too: the pages are small enough to have none)."""
    page.add_script_tag(path=AXE)
    violations = page.evaluate(
        """() => axe.run(document, {resultTypes: ['violations']}).then(r =>
             r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
               nodes: v.nodes.slice(0, 3).map(n => n.target.join(' '))})))"""
    )
    check(violations == [], f"axe-core on {name}: {json.dumps(violations, indent=1)}")
    log(f"axe-core: no violations on {name}")


def nothing_injected(page, name):
    """No element made from data: the ids with markup in them are text only."""
    injected = page.evaluate(
        """() => ({
             b: document.querySelectorAll('b').length,
             img: document.querySelectorAll('img').length,
             // Inline scripts, but for axe-core's (added by this script, whose text
             // starts with its banner).
             inline: [...document.scripts].filter(s => !s.src && !s.text.startsWith('/*! axe')).length,
             pwned: window.__pwned === undefined ? null : window.__pwned,
           })"""
    )
    check(
        injected == {"b": 0, "img": 0, "inline": 0, "pwned": None},
        f"markup from data was injected on {name}: {injected}",
    )


def load_times(page):
    """Navigation start to the load event, and to the first data shown (ms)."""
    return page.evaluate(
        """() => ({
             load_ms: performance.getEntriesByType('navigation')[0].loadEventEnd,
             data_ms: performance.getEntriesByName('mq-data')[0].startTime,
           })"""
    )


def updates(page):
    return int(page.evaluate("document.body.dataset.updates || '0'"))


def wait_update(page, after):
    page.wait_for_function(
        f"Number(document.body.dataset.updates || 0) > {after}", timeout=WAIT_MS
    )


def board_rows(page, period):
    return page.evaluate(
        f"""() => [...document.querySelectorAll('#board-{period} tbody tr')]
              .filter(tr => tr.cells.length === 3)
              .map(tr => [tr.cells[0].textContent, tr.cells[1].textContent, tr.cells[2].textContent])"""
    )


def check_board(page, by):
    for period in ["day", "week", "all"]:
        want = api(f"/v1/leaderboard?by={by}&period={period}&limit=10")
        got = board_rows(page, period)
        rows = [[str(e["rank"]), e["user_id"], str(e["score"])] for e in want["entries"]]
        check_eq([[r, u, plain(s)] for r, u, s in got], rows, f"/board by={by} period={period}")
        check(len(rows) > 0, f"/board by={by} period={period} is empty")


def test_board(browser, results):
    ctx = browser.new_context(bypass_csp=True, viewport={"width": 1920, "height": 1080})
    page = ctx.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    # The token in the fragment: kept for the tab, then removed from the address.
    page.goto(f"{BASE}/board?every=1#token={urllib.parse.quote(TOKEN)}")
    page.wait_for_load_state("load")
    wait_update(page, 0)
    results["board"] = load_times(page)
    check("token" not in page.url, f"the token stayed in the address: {page.url}")
    check_board(page, "xp")
    users = [u for _, u, _ in board_rows(page, "all")]
    check(USER in users, f"{USER!r} is not shown as text on /board: {users}")
    nothing_injected(page, "/board")
    axe(page, "/board")
    page.screenshot(path=os.path.join(ARTIFACTS, "board.png"))

    # Another ranking, chosen on the page.
    seen = updates(page)
    page.get_by_label("Ranked by").select_option("coins")
    page.wait_for_function(
        "document.querySelector('#board-all th.score').textContent === 'Coins'", timeout=WAIT_MS
    )
    wait_update(page, updates(page))
    check_board(page, "coins")
    check("by=coins" in page.url, f"the choice is not in the address: {page.url}")
    page.get_by_label("Ranked by").select_option("xp")
    wait_update(page, updates(page))

    # Live: new receipts make a new leader, and the open page shows it by itself.
    print("need-more", flush=True)
    line = sys.stdin.readline().split()
    check(line[:1] == ["more"], f"unexpected answer from the test: {line}")
    leader = line[1]
    check(USER != leader, "the new leader must be another user")
    page.wait_for_function(
        """leader => {
             const c = document.querySelector('#board-all tbody tr:first-child td.user');
             return c && c.textContent === leader;
           }""",
        arg=leader,
        timeout=WAIT_MS,
    )
    check(updates(page) > seen, "the board did not poll")
    check_board(page, "xp")
    log(f"/board showed the new leader {leader} by itself")
    check(errors == [], f"script errors on /board: {errors}")
    ctx.close()


def test_me(browser, results):
    # A fresh context: no token kept from /board.
    ctx = browser.new_context(bypass_csp=True, viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    path = "/me/" + urllib.parse.quote(USER, safe="")
    page.goto(BASE + path)
    page.wait_for_load_state("load")
    # The API answered 401: the labelled token form, no data.
    form = page.locator("#token-form")
    form.wait_for(state="visible", timeout=WAIT_MS)
    check(page.locator("#profile").is_hidden(), "data shown before a token was given")
    axe(page, "/me (token form)")
    page.screenshot(path=os.path.join(ARTIFACTS, "me-token.png"))
    # A wrong token is refused and asked again.
    page.get_by_label("Access token").fill("wrong-" + TOKEN)
    page.get_by_role("button").click()
    form.wait_for(state="visible", timeout=WAIT_MS)
    check(page.locator("#profile").is_hidden(), "data shown with a wrong token")
    page.get_by_label("Access token").fill(TOKEN)
    page.get_by_role("button").click()
    wait_update(page, 0)
    check(form.is_hidden(), "the token form stayed after a good token")

    p = api("/v1/users/" + urllib.parse.quote(USER, safe=""))
    levels = api("/v1/levels")
    text = lambda sel: page.locator(sel).text_content()
    check_eq(text("#user-id"), USER, "the shopper's id (shown as text)")
    check_eq(plain(text("#coins")), str(p["coins"]), "coins")
    check_eq(plain(text("#xp")), str(p["xp"]), "xp")
    check_eq(text("#level"), str(p["level"]), "level")
    check_eq(plain(text("#spent")), p["total_spent"], "spent")
    check_eq(plain(text("#receipts")), str(p["receipt_count"]), "receipts")
    check_eq(plain(text("#stores")), str(p["stores_visited"]), "stores visited")
    check_eq(
        text("#streak"), f"{p['streak']['current']} (best {p['streak']['best']})", "streak"
    )
    check(p["level"] < levels["max_level"], "the test user should not be at the top level")
    floor = lambda level: (level - 1) ** 2 * levels["level_xp_base"]
    bar = page.evaluate(
        "() => { const b = document.getElementById('level-progress'); return [b.value, b.max]; }"
    )
    lo, hi = floor(p["level"]), floor(p["level"] + 1)
    check_eq(bar, [min(max(p["xp"] - lo, 0), hi - lo), hi - lo], "progress to the next level")
    check(str(p["level"] + 1) in text("#level-next"), "the next level is named")
    for by in ["xp", "coins", "spent"]:
        for period in ["week", "all"]:
            r = api(f"/v1/users/{urllib.parse.quote(USER, safe='')}/rank?by={by}&period={period}")
            got = text(f"#ranks tr[data-by={by}] td[data-period={period}]")
            check_eq(plain(got), f"{r['rank']} of {r['of']}", f"rank by={by} period={period}")
    badges = page.evaluate("() => [...document.querySelectorAll('#badges li')].map(l => l.textContent)")
    check_eq(badges, p["badges"] or ["None yet"], "badges")
    check(len(p["badges"]) > 0, "the test user should hold badges")
    # In progress: not completed, in a period running now (as the boards name it).
    now = {"once"} | {api(f"/v1/leaderboard?period={k}&limit=1")["at"] for k in ["day", "week", "month"]}
    open_missions = [m["mission_id"] for m in p["missions"] if not m["completed"] and m["period"] in now]
    check(
        any(not m["completed"] and m["period"] not in now for m in p["missions"]),
        "the test user should hold a mission instance of a past period (not in progress)",
    )
    shown = page.evaluate(
        "() => [...document.querySelectorAll('#missions tbody tr')].filter(r => r.cells.length === 5).map(r => r.cells[0].textContent)"
    )
    check_eq(shown, open_missions, "missions in progress")
    recent = page.locator("#recent li").all_text_contents()
    check(recent and recent[0].startswith("Last purchase"), f"recent activity: {recent}")
    nothing_injected(page, "/me")
    axe(page, "/me")
    page.screenshot(path=os.path.join(ARTIFACTS, "me.png"), full_page=True)

    # Reloaded with the token kept for the tab: no form, straight to the data.
    page.reload()
    page.wait_for_load_state("load")
    wait_update(page, 0)
    check(form.is_hidden(), "the token form came back although the tab keeps the token")
    results["me"] = load_times(page)
    check(errors == [], f"script errors on /me: {errors}")
    ctx.close()


def main():
    os.makedirs(ARTIFACTS, exist_ok=True)
    # The API itself stays closed without the token, pages or not.
    check_eq(api_status("/v1/leaderboard"), 401, "/v1/leaderboard without the token")
    check_eq(api_status("/board"), 200, "/board without the token (the shell holds no data)")
    results = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            test_board(browser, results)
            test_me(browser, results)
        finally:
            browser.close()
    print("result " + json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
