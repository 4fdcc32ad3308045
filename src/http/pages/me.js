"use strict";
// /me/{user_id}: one shopper's figures from /v1/users/{id}, ranks from
// /v1/users/{id}/rank, the level scale from /v1/levels, and the current periods from
// /v1/leaderboard. The projection keeps no event
// log, so "recent activity" is what it dates or orders: the last and first purchases,
// missions completed (by their period), badges (in earning order) and redemptions.

(() => {
  const raw = location.pathname.slice("/me/".length);
  let userId;
  try { userId = decodeURIComponent(raw); } catch (e) { userId = raw; }
  const enc = encodeURIComponent(userId);
  let levels = null;
  let updates = 0;
  MQ.text("user-id", userId);
  document.title = userId + " · mallquest";

  function when(iso) {
    const d = new Date(iso);
    return MQ.el("time", { datetime: iso }, isNaN(d) ? iso : d.toLocaleString("en-GB", { timeZone: "UTC", timeZoneName: "short" }));
  }

  function showLevel(p) {
    MQ.text("level", String(p.level));
    const bar = document.getElementById("level-progress");
    if (!levels) return;
    const floor = (l) => (l - 1) * (l - 1) * levels.level_xp_base;
    if (p.level >= levels.max_level) {
      bar.max = 1; bar.value = 1;
      MQ.text("level-next", "Highest level reached.");
      return;
    }
    const from = floor(p.level), to = floor(p.level + 1);
    bar.max = to - from;
    bar.value = Math.min(Math.max(p.xp - from, 0), to - from);
    MQ.text("level-next", MQ.number(Math.max(to - p.xp, 0)) + " XP to level " + (p.level + 1) + " (at " + MQ.number(to) + " XP)");
  }

  function recent(p) {
    const items = [];
    if (p.last_receipt_at) items.push(MQ.el("li", {}, "Last purchase, ", when(p.last_receipt_at)));
    const done = p.missions.filter((m) => m.completed).reverse();
    for (const m of done.slice(0, 5)) items.push(MQ.el("li", {}, "Mission completed: ", m.mission_id, " (" + m.period + ")"));
    for (const b of p.badges.slice(-5).reverse()) items.push(MQ.el("li", {}, "Badge earned: ", b));
    if (p.redemptions > 0) {
      items.push(MQ.el("li", {}, MQ.number(p.redemptions) + " redemption" + (p.redemptions === 1 ? "" : "s") + ", " + MQ.number(p.coins_redeemed) + " coins redeemed"));
    }
    if (p.first_receipt_at) items.push(MQ.el("li", {}, "First purchase, ", when(p.first_receipt_at)));
    if (items.length === 0) items.push(MQ.el("li", {}, "Nothing yet"));
    document.getElementById("recent").replaceChildren(...items);
  }

  async function rank(by, period) {
    try {
      const r = await MQ.api("/v1/users/" + enc + "/rank?" + new URLSearchParams({ by, period }));
      return MQ.number(r.rank) + " of " + MQ.number(r.of);
    } catch (e) {
      if (e.status === 404) return "not ranked";
      throw e;
    }
  }

  // The periods running now, as the boards name them (the period holding the latest
  // receipt time of the mall): a mission instance of an earlier one is over, not in progress.
  async function currentPeriods() {
    const boards = await Promise.all(["day", "week", "month"].map((period) =>
      MQ.api("/v1/leaderboard?" + new URLSearchParams({ period, limit: "1" }))));
    return new Set(["once", ...boards.map((b) => b.at)]);
  }

  async function load() {
    let p;
    try {
      p = await MQ.api("/v1/users/" + enc);
    } catch (e) {
      if (e.status === 404) {
        document.getElementById("profile").hidden = true;
        MQ.status("No shopper " + userId + " (yet).", true);
        return;
      }
      throw e;
    }
    if (!levels) levels = await MQ.api("/v1/levels");
    const cells = [...document.querySelectorAll("#ranks td")];
    const [ranks, now] = await Promise.all([
      Promise.all(cells.map((td) => rank(td.parentElement.dataset.by, td.dataset.period))),
      currentPeriods(),
    ]);
    MQ.text("coins", MQ.number(p.coins));
    MQ.text("xp", MQ.number(p.xp));
    showLevel(p);
    MQ.text("streak", p.streak.current + " (best " + p.streak.best + ")");
    MQ.text("spent", MQ.number(p.total_spent));
    MQ.text("receipts", MQ.number(p.receipt_count));
    MQ.text("stores", MQ.number(p.stores_visited));
    cells.forEach((td, i) => { td.textContent = ranks[i]; });
    const badges = p.badges.map((b) => MQ.el("li", {}, b));
    document.getElementById("badges").replaceChildren(...(badges.length ? badges : [MQ.el("li", {}, "None yet")]));
    const open = p.missions.filter((m) => !m.completed && now.has(m.period)).map((m) =>
      MQ.el("tr", {}, MQ.el("td", {}, m.mission_id), MQ.el("td", {}, m.period), MQ.el("td", { class: "num" }, MQ.number(m.spend)),
        MQ.el("td", { class: "num" }, String(m.receipts)), MQ.el("td", { class: "num" }, String(m.stores))));
    document.querySelector("#missions tbody").replaceChildren(...(open.length ? open : [MQ.el("tr", {}, MQ.el("td", { colspan: "5" }, "None in progress"))]));
    recent(p);
    document.getElementById("profile").hidden = false;
    updates += 1;
    document.body.dataset.updates = String(updates);
    if (updates === 1) performance.mark("mq-data");
    MQ.status("Updated " + new Date().toLocaleTimeString("en-GB"));
  }

  MQ.poll(load, 15000);
})();
