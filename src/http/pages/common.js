"use strict";
// Shared by /board and /me/{id}: the bearer token, reading /v1, and building the DOM.
// Every value shown goes in as text (textContent, or a string given to append(), which
// makes a Text node): never as markup, so an id holding HTML shows as the characters it is.

const MQ = (() => {
  const KEY = "mallquest.token";

  // `#token=...` in the address: kept for this tab, then taken out of the address (and so
  // out of the history and of anything a screenshot shows).
  const fromHash = /(?:^#|&)token=([^&]*)/.exec(location.hash);
  if (fromHash) {
    try { sessionStorage.setItem(KEY, decodeURIComponent(fromHash[1])); } catch (e) { /* storage off */ }
    history.replaceState(null, "", location.pathname + location.search);
  }

  class Unauthorized extends Error {}

  function token() {
    try { return sessionStorage.getItem(KEY); } catch (e) { return null; }
  }

  // GET a /v1 path as JSON; throws Unauthorized on 401, an Error with `status` and `code`
  // (the API's error code) otherwise.
  async function api(path) {
    const t = token();
    const r = await fetch(path, { headers: t ? { Authorization: "Bearer " + t } : {}, cache: "no-store" });
    if (r.status === 401) throw new Unauthorized("a token is needed");
    const body = await r.json().catch(() => null);
    if (!r.ok) {
      const e = new Error((body && body.message) || r.statusText || String(r.status));
      e.status = r.status;
      e.code = body && body.error;
      throw e;
    }
    return body;
  }

  // An element with attributes and children (strings become text nodes).
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    e.append(...children);
    return e;
  }

  function text(id, value) {
    document.getElementById(id).textContent = value;
  }

  // Shows the token form; `then` runs once a token has been entered.
  function askToken(then) {
    const form = document.getElementById("token-form");
    const input = document.getElementById("token");
    form.hidden = false;
    form.onsubmit = (ev) => {
      ev.preventDefault();
      try { sessionStorage.setItem(KEY, input.value); } catch (e) { /* storage off: this page only */ }
      input.value = "";
      form.hidden = true;
      then();
    };
    if (token()) status("That token was refused: enter another.", true);
    input.focus();
  }

  function status(message, bad) {
    const s = document.getElementById("status");
    s.textContent = message;
    s.classList.toggle("error", !!bad);
  }

  const fmt = new Intl.NumberFormat("en");
  // Integers grouped; money strings ("1234.50") grouped in their whole part.
  function number(v) {
    if (typeof v === "number") return fmt.format(v);
    const m = /^(-?)(\d+)(\.\d+)?$/.exec(String(v));
    return m ? m[1] + fmt.format(Number(m[2])) + (m[3] || "") : String(v);
  }

  // Runs `load` now and every `everyMs`, never two at once; asks for a token on 401.
  function poll(load, everyMs) {
    let timer = null;
    const run = async () => {
      clearTimeout(timer);
      try {
        await load();
        timer = setTimeout(run, everyMs);
      } catch (e) {
        if (e instanceof Unauthorized) {
          status("Access token needed.", true);
          askToken(run);
          return;
        }
        status("Could not update: " + e.message + " (retrying)", true);
        timer = setTimeout(run, everyMs);
      }
    };
    run();
  }

  return { api, el, text, status, number, poll, Unauthorized };
})();
