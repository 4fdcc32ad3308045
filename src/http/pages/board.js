"use strict";
// /board: today's, this week's and all-time top 10 from /v1/leaderboard (which gathers
// every instance's partitions), by the ranking chosen, refreshed every few seconds.
// The address may choose: /board?by=coins&limit=10&every=5 (seconds).

(() => {
  const params = new URLSearchParams(location.search);
  const select = document.getElementById("by");
  const by = params.get("by");
  if (["xp", "coins", "spent"].includes(by)) select.value = by;
  const limit = Math.min(Math.max(parseInt(params.get("limit"), 10) || 10, 1), 100);
  const everyMs = Math.max(parseFloat(params.get("every")) || 5, 1) * 1000;
  const periods = ["day", "week", "all"];
  let updates = 0;

  function render(period, board) {
    const body = document.querySelector("#board-" + period + " tbody");
    const rows = board.entries.map((e) =>
      MQ.el("tr", {},
        MQ.el("td", { class: "rank" }, String(e.rank)),
        MQ.el("td", { class: "user" }, e.user_id),
        MQ.el("td", { class: "score" }, MQ.number(e.score))));
    if (rows.length === 0) {
      rows.push(MQ.el("tr", {}, MQ.el("td", { colspan: "3" }, "No shoppers yet")));
    }
    body.replaceChildren(...rows);
    const at = document.getElementById("at-" + period);
    if (at) at.textContent = board.at ? "(" + board.at + ")" : "";
  }

  async function load() {
    const boards = await Promise.all(periods.map((p) =>
      MQ.api("/v1/leaderboard?" + new URLSearchParams({ by: select.value, period: p, limit: String(limit) }))));
    periods.forEach((p, i) => render(p, boards[i]));
    document.querySelectorAll("th.score").forEach((th) => {
      th.textContent = select.options[select.selectedIndex].text;
    });
    updates += 1;
    document.body.dataset.updates = String(updates);
    if (updates === 1) performance.mark("mq-data");
    MQ.status("Updated " + new Date().toLocaleTimeString("en-GB") + " · refreshes every " + everyMs / 1000 + " s");
  }

  select.addEventListener("change", () => {
    params.set("by", select.value);
    history.replaceState(null, "", location.pathname + "?" + params + location.hash);
    load().catch((e) => MQ.status("Could not update: " + e.message, true));
  });
  MQ.poll(load, everyMs);
})();
