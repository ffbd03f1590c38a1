// LiveAlign feedback widget: one ES module, no build step, no dependencies.
//
//   <script type="module" src="https://livealign.example/widget.js"></script>
//   <livealign-feedback response-id="chatcmpl-..." token="..." for="answer-1">
//
// or from JS: import { attach, send, compare } from ".../widget.js".
//
// Every event gets its event_id when it is made, and is kept in localStorage until the
// server has it: batches go out at 25 events or after 2 s; when the page is hidden the
// rest goes by navigator.sendBeacon. A failed send (offline, 503, 429) is retried with
// backoff under the same event_id (the server drops duplicates); a 4xx is dropped with a
// warning. The body is JSON sent as text/plain, so no CORS preflight is needed. The
// per-response token is the only credential: the page holds no secret.

const MAX_BATCH = 25;
const FLUSH_MS = 2000;
const MAX_QUEUE = 500; // events kept at most; beyond it the oldest go, with a warning
const BACKOFF_MS = [1000, 2000, 4000, 8000, 16000, 30000, 60000];
const BEACON_MAX_BYTES = 60000; // browsers take about 64 kB of beacons in flight

function newId() {
  if (globalThis.crypto?.randomUUID) return "fb-" + crypto.randomUUID();
  return "fb-" + Date.now().toString(36) + Math.random().toString(36).slice(2);
}

export class FeedbackClient {
  constructor(endpoint, { storageKey } = {}) {
    this.endpoint = new URL(endpoint, location.href).href;
    this.key = storageKey || "livealign.feedback:" + this.endpoint;
    this.queue = this.load(); // events not yet accepted, oldest first
    this.inflight = new Set(); // event ids being sent now
    this.failures = 0;
    this.timer = null;
    addEventListener("online", () => this.flush());
    // pagehide: the tab closes or navigates; visibilitychange: it goes to the
    // background (on phones, often the last event a page gets).
    addEventListener("pagehide", () => this.beacon());
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "hidden") this.beacon();
    });
    if (this.queue.length) this.schedule(0); // left over from an earlier page
  }

  load() {
    try {
      const saved = JSON.parse(localStorage.getItem(this.key) || "[]");
      return Array.isArray(saved) ? saved : [];
    } catch {
      return [];
    }
  }

  save() {
    try {
      localStorage.setItem(this.key, JSON.stringify(this.queue));
    } catch (err) {
      console.warn("livealign: cannot keep feedback in localStorage", err);
    }
  }

  // Queue one event; returns it (with its event_id).
  send(responseId, token, kind, value, extra = {}) {
    const event = {
      event_id: newId(),
      response_id: responseId,
      feedback_token: token,
      kind,
      value,
      client_ts: Date.now(),
      ...extra,
    };
    this.queue.push(event);
    if (this.queue.length > MAX_QUEUE) {
      const gone = this.queue.splice(0, this.queue.length - MAX_QUEUE);
      console.warn(`livealign: feedback queue full, ${gone.length} oldest events dropped`);
    }
    this.save();
    const waiting = this.queue.filter((e) => !this.inflight.has(e.event_id)).length;
    this.schedule(waiting >= MAX_BATCH ? 0 : FLUSH_MS);
    return event;
  }

  schedule(ms) {
    if (this.timer !== null) {
      if (ms > 0) return; // one is due already
      clearTimeout(this.timer);
    }
    this.timer = setTimeout(() => {
      this.timer = null;
      this.flush();
    }, ms);
  }

  next() {
    return this.queue.filter((e) => !this.inflight.has(e.event_id)).slice(0, MAX_BATCH);
  }

  forget(ids) {
    const drop = new Set(ids);
    this.queue = this.queue.filter((e) => !drop.has(e.event_id));
    this.save();
  }

  async flush() {
    const batch = this.next();
    if (!batch.length) return;
    const ids = batch.map((e) => e.event_id);
    ids.forEach((id) => this.inflight.add(id));
    let retry = false;
    try {
      const res = await fetch(this.endpoint + "?via=widget-fetch", {
        method: "POST",
        headers: { "Content-Type": "text/plain;charset=UTF-8" },
        body: JSON.stringify({ events: batch }),
        keepalive: true,
        credentials: "omit",
      });
      retry = await this.settle(res, batch);
    } catch {
      retry = true; // offline, refused, or a CORS failure: kept for later
    } finally {
      ids.forEach((id) => this.inflight.delete(id));
    }
    if (retry) {
      const delay = BACKOFF_MS[Math.min(this.failures, BACKOFF_MS.length - 1)];
      this.failures += 1;
      this.schedule(delay * (0.75 + Math.random() / 2));
    } else {
      this.failures = 0;
      if (this.next().length) this.schedule(0);
    }
  }

  // Drop what the server took or refused for good; true if some must be retried.
  async settle(res, batch) {
    if (res.status === 503 || res.status === 429 || res.status >= 500) {
      let body = null;
      try {
        body = await res.json();
      } catch {}
      if (body && Array.isArray(body.accepted)) this.forget(body.accepted);
      return true;
    }
    if (res.status >= 400 && res.status !== 413) {
      let body = null;
      try {
        body = await res.json();
      } catch {}
      if (body && Array.isArray(body.rejected)) return this.sort(body, batch);
      console.warn(`livealign: feedback refused (${res.status}), dropped`, body);
      this.forget(batch.map((e) => e.event_id));
      return false;
    }
    if (res.status === 413) {
      console.warn("livealign: feedback batch too large, dropped");
      this.forget(batch.map((e) => e.event_id));
      return false;
    }
    return this.sort(await res.json(), batch);
  }

  // A batch's answer: accepted ids go, refused ones go with a warning, 503 ones stay.
  sort(body, batch) {
    const done = [...(body.accepted || [])];
    let retry = false;
    for (const r of body.rejected || []) {
      const event = batch[r.index];
      if (!event) continue;
      if (r.status === 503) {
        retry = true;
      } else {
        console.warn(`livealign: feedback event refused (${r.status}): ${r.error}`, event);
        done.push(event.event_id);
      }
    }
    this.forget(done);
    return retry;
  }

  // The page is going away: what is waiting goes by beacon. A beacon the browser took
  // is taken as delivered (its answer can never be read); one it refused stays queued
  // for the next page of this site.
  beacon() {
    if (!navigator.sendBeacon) return;
    let batch = this.next();
    while (batch.length) {
      let body = JSON.stringify({ events: batch });
      while (body.length > BEACON_MAX_BYTES && batch.length > 1) {
        batch = batch.slice(0, Math.ceil(batch.length / 2));
        body = JSON.stringify({ events: batch });
      }
      const blob = new Blob([body], { type: "text/plain;charset=UTF-8" });
      if (!navigator.sendBeacon(this.endpoint + "?via=widget-beacon", blob)) return;
      this.forget(batch.map((e) => e.event_id));
      batch = this.next();
    }
  }
}

// ── The default client, posting to the server this module came from ──────────────────

let defaultClient = null;
export function client() {
  defaultClient ??= new FeedbackClient(new URL("/v1/feedback", import.meta.url));
  return defaultClient;
}
export function useEndpoint(endpoint) {
  defaultClient = new FeedbackClient(endpoint);
  return defaultClient;
}

export function send(responseId, token, kind, value, extra) {
  return client().send(responseId, token, kind, value, extra);
}

// A side-by-side verdict: `verdict` is on answer `a` against `b` (better, worse, tie,
// both_bad); each is {responseId, token}.
export function compare(a, b, verdict) {
  return send(a.responseId, a.token, "compare", verdict, {
    other_response_id: b.responseId,
    other_feedback_token: b.token,
  });
}

// ── Implicit signals on any element that shows an answer ───────────────────────────────

// Copy (with the copied share of the answer), link clicks and dwell (milliseconds the
// answer was at least half in view while the page was visible, sent when it leaves
// view or the page is hidden). Returns a function that stops watching.
export function attach(element, { responseId, token }) {
  const emit = (kind, value, extra) => send(responseId, token, kind, value, extra);
  const onCopy = () => {
    const copied = String(document.getSelection() || "").length;
    const whole = element.textContent.length || 1;
    emit("click", "copy", { copied_share: Math.min(1, copied / whole) });
  };
  const onClick = (ev) => {
    if (ev.target.closest?.("a[href]")) emit("click", "link");
  };
  let inView = false;
  let since = null;
  let shown = 0;
  const start = () => {
    if (since === null && inView && document.visibilityState === "visible") since = Date.now();
  };
  const stop = () => {
    if (since !== null) shown += Date.now() - since;
    since = null;
  };
  const report = () => {
    stop();
    if (shown > 0) emit("dwell", Math.round(shown));
    shown = 0;
  };
  const seen = new IntersectionObserver(
    ([entry]) => {
      inView = entry.intersectionRatio >= 0.5;
      if (inView) start();
      else report();
    },
    { threshold: [0, 0.5, 1] },
  );
  // Leaving: the dwell is queued, then sent by beacon at once (the client's own
  // pagehide listener may have run already).
  const onHide = () => {
    report();
    client().beacon();
  };
  const onVisibility = () => {
    if (document.visibilityState === "hidden") onHide();
    else start();
  };
  element.addEventListener("copy", onCopy);
  element.addEventListener("click", onClick);
  document.addEventListener("visibilitychange", onVisibility);
  addEventListener("pagehide", onHide);
  seen.observe(element);
  return () => {
    report();
    seen.disconnect();
    element.removeEventListener("copy", onCopy);
    element.removeEventListener("click", onClick);
    document.removeEventListener("visibilitychange", onVisibility);
    removeEventListener("pagehide", onHide);
  };
}

// ── A word diff, to show what an edit changed ──────────────────────────────────────────

// [[op, text]] with op "=", "-" or "+", by longest common subsequence over words
// (answers are short enough; past 2000 words it says "replaced").
export function diffWords(before, after) {
  const a = before.split(/(\s+)/);
  const b = after.split(/(\s+)/);
  if (a.length * b.length > 4e6) return [["-", before], ["+", after]];
  const lcs = Array.from({ length: a.length + 1 }, () => new Uint16Array(b.length + 1));
  for (let i = a.length - 1; i >= 0; i--)
    for (let j = b.length - 1; j >= 0; j--)
      lcs[i][j] = a[i] === b[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
  const out = [];
  const push = (op, text) => {
    if (out.length && out[out.length - 1][0] === op) out[out.length - 1][1] += text;
    else out.push([op, text]);
  };
  let i = 0;
  let j = 0;
  while (i < a.length || j < b.length) {
    if (i < a.length && j < b.length && a[i] === b[j]) {
      push("=", a[i]);
      i++;
      j++;
    } else if (j < b.length && (i === a.length || lcs[i][j + 1] > lcs[i + 1][j])) push("+", b[j++]);
    else push("-", a[i++]);
  }
  return out;
}

export function renderDiff(parts) {
  const box = document.createElement("div");
  box.className = "la-diff";
  box.setAttribute("aria-label", "What your edit changed");
  for (const [op, text] of parts) {
    const tag = op === "=" ? "span" : op === "+" ? "ins" : "del";
    const el = document.createElement(tag);
    el.textContent = text;
    box.append(el);
  }
  return box;
}

// ── <livealign-feedback response-id token for> ─────────────────────────────────────────

const REASONS = ["Helpful", "Wrong", "Too long", "Too short", "Unsafe", "Rude"];
const STYLE = `
:host{display:block;font:inherit;margin:.4rem 0}
.row{display:flex;flex-wrap:wrap;gap:.35rem;align-items:center}
button{font:inherit;min-height:2.25rem;min-width:2.25rem;padding:.2rem .55rem;border:1px solid #8a8f98;
 border-radius:.5rem;background:#fff;color:#1d2330;cursor:pointer}
button[aria-pressed=true],button[aria-checked=true]{background:#1d4ed8;color:#fff;border-color:#1d4ed8}
button:focus-visible,textarea:focus-visible{outline:3px solid #f59e0b;outline-offset:1px}
[role=radiogroup]{display:inline-flex;gap:.15rem}
.more{margin-top:.4rem}.more[hidden]{display:none}
textarea{font:inherit;width:100%;box-sizing:border-box;min-height:3.5rem;margin:.35rem 0}
.status{font-size:.85em;color:#3f4756;min-height:1.2em}
.sr{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0)}
.la-diff ins{background:#d1fae5;text-decoration:none}.la-diff del{background:#fee2e2}
.la-diff{white-space:pre-wrap;border-left:3px solid #8a8f98;padding-left:.5rem;margin:.4rem 0}
`;

let sheet = null;

class LiveAlignFeedback extends HTMLElement {
  connectedCallback() {
    if (this.shadowRoot) return;
    const root = this.attachShadow({ mode: "open" });
    // A constructed sheet, not a <style>: a page whose CSP forbids inline styles (this
    // app's own) still styles the widget.
    if (root.adoptedStyleSheets !== undefined) {
      sheet ??= new CSSStyleSheet();
      sheet.replaceSync(STYLE);
      root.adoptedStyleSheets = [sheet];
    }
    root.innerHTML = `${root.adoptedStyleSheets ? "" : `<style>${STYLE}</style>`}
<div class="row" role="group" aria-label="Feedback on this answer">
 <button part="up" data-thumb="1" aria-pressed="false" aria-label="Good answer">▲ Good</button>
 <button part="down" data-thumb="-1" aria-pressed="false" aria-label="Bad answer">▼ Bad</button>
 <span role="radiogroup" aria-label="Rating, 1 to 5 stars"></span>
 <button part="copy" data-act="copy">Copy</button>
 <button part="edit" data-act="edit" aria-expanded="false">Edit</button>
 <button part="more" data-act="more" aria-expanded="false">Comment</button>
</div>
<div class="more" hidden>
 <div class="row" role="group" aria-label="Reasons"></div>
 <label><span class="sr">Comment</span><textarea placeholder="What could be better?"></textarea></label>
 <button data-act="comment">Send comment</button>
</div>
<div class="edited"></div>
<div class="status" role="status" aria-live="polite"></div>`;
    const stars = root.querySelector("[role=radiogroup]");
    for (let n = 1; n <= 5; n++) {
      const b = document.createElement("button");
      b.setAttribute("role", "radio");
      b.setAttribute("aria-checked", "false");
      b.setAttribute("aria-label", `${n} star${n > 1 ? "s" : ""}`);
      b.dataset.star = n;
      b.tabIndex = n === 1 ? 0 : -1;
      b.textContent = "☆";
      stars.append(b);
    }
    const chips = root.querySelector(".more .row");
    for (const reason of REASONS) {
      const b = document.createElement("button");
      b.dataset.reason = reason;
      b.setAttribute("aria-pressed", "false");
      b.textContent = reason;
      chips.append(b);
    }
    root.addEventListener("click", (ev) => this.onClick(ev));
    stars.addEventListener("keydown", (ev) => this.onStarKey(ev));
    const target = this.target();
    if (target && !this.hasAttribute("no-implicit"))
      this.detach = attach(target, { responseId: this.responseId, token: this.token });
  }

  disconnectedCallback() {
    this.detach?.();
    this.detach = null;
  }

  get responseId() {
    return this.getAttribute("response-id");
  }
  get token() {
    return this.getAttribute("token");
  }
  target() {
    const id = this.getAttribute("for");
    return id ? this.getRootNode().getElementById?.(id) || document.getElementById(id) : null;
  }
  emit(kind, value, extra) {
    const event = send(this.responseId, this.token, kind, value, extra);
    this.dispatchEvent(new CustomEvent("livealign-feedback", { detail: event, bubbles: true }));
    return event;
  }
  say(text) {
    this.shadowRoot.querySelector(".status").textContent = text;
  }

  onClick(ev) {
    const b = ev.target.closest("button");
    if (!b) return;
    const root = this.shadowRoot;
    if (b.dataset.thumb) {
      const on = b.getAttribute("aria-pressed") !== "true";
      if (!on) return; // a thumb is changed by pressing the other one
      root.querySelectorAll("[data-thumb]").forEach((t) => t.setAttribute("aria-pressed", String(t === b)));
      this.emit("thumb", Number(b.dataset.thumb));
      this.say(b.dataset.thumb === "1" ? "Thanks: marked good." : "Thanks: marked bad.");
    } else if (b.dataset.star) {
      this.rate(Number(b.dataset.star));
    } else if (b.dataset.reason) {
      b.setAttribute("aria-pressed", String(b.getAttribute("aria-pressed") !== "true"));
    } else if (b.dataset.act === "more") {
      const more = root.querySelector(".more");
      more.hidden = !more.hidden;
      b.setAttribute("aria-expanded", String(!more.hidden));
      if (!more.hidden) root.querySelector("textarea").focus();
    } else if (b.dataset.act === "comment") {
      this.sendComment();
    } else if (b.dataset.act === "copy") {
      this.copy();
    } else if (b.dataset.act === "edit") {
      this.toggleEdit(b);
    }
  }

  rate(n) {
    this.shadowRoot.querySelectorAll("[data-star]").forEach((s) => {
      const k = Number(s.dataset.star);
      s.textContent = k <= n ? "★" : "☆";
      s.setAttribute("aria-checked", String(k === n));
      s.tabIndex = k === n ? 0 : -1;
    });
    this.emit("rating", n);
    this.say(`Rated ${n} of 5.`);
  }

  onStarKey(ev) {
    const n = Number(ev.target.dataset.star);
    const step = { ArrowRight: 1, ArrowUp: 1, ArrowLeft: -1, ArrowDown: -1 }[ev.key];
    if (!n || !step) return;
    ev.preventDefault();
    const k = Math.min(5, Math.max(1, n + step));
    this.rate(k);
    this.shadowRoot.querySelector(`[data-star="${k}"]`).focus();
  }

  sendComment() {
    const root = this.shadowRoot;
    const reasons = [...root.querySelectorAll("[data-reason][aria-pressed=true]")].map((b) => b.dataset.reason);
    const text = root.querySelector("textarea").value.trim();
    const parts = [];
    if (reasons.length) parts.push(`Reasons: ${reasons.join(", ").toLowerCase()}.`);
    if (text) parts.push(text);
    if (!parts.length) return this.say("Pick a reason or write a comment first.");
    this.emit("comment", parts.join(" "));
    root.querySelector("textarea").value = "";
    root.querySelectorAll("[data-reason]").forEach((b) => b.setAttribute("aria-pressed", "false"));
    this.say("Thanks: comment sent.");
  }

  async copy() {
    const text = this.target()?.innerText ?? "";
    try {
      await navigator.clipboard.writeText(text);
    } catch {} // no clipboard permission: the signal still says the user wanted it
    this.emit("click", "copy", { copied_share: 1 });
    this.say("Copied.");
  }

  toggleEdit(button) {
    const target = this.target();
    if (!target) return this.say("Nothing to edit here.");
    if (target.isContentEditable) {
      target.contentEditable = "false";
      button.textContent = "Edit";
      button.setAttribute("aria-expanded", "false");
      const after = target.innerText.trim();
      const before = this.original ?? after;
      const box = this.shadowRoot.querySelector(".edited");
      box.replaceChildren();
      if (after && after !== before) {
        this.emit("edit", after);
        box.append(renderDiff(diffWords(before, after)));
        this.say("Thanks: your correction was sent.");
      } else {
        this.say("No change.");
      }
      return;
    }
    this.original ??= target.innerText.trim();
    target.contentEditable = "plaintext-only";
    if (target.contentEditable !== "plaintext-only") target.contentEditable = "true";
    target.setAttribute("aria-label", "Answer, editable: change it, then press Save");
    button.textContent = "Save";
    button.setAttribute("aria-expanded", "true");
    target.focus();
    this.say("Edit the answer in place, then press Save.");
  }
}

if (!customElements.get("livealign-feedback")) customElements.define("livealign-feedback", LiveAlignFeedback);
