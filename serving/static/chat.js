// The chat page: streams answers from /v1/chat/completions and puts the feedback widget
// (widget.js) on each one. Compare mode asks twice and shows both answers side by side,
// in random order, their versions hidden until the vote.
import { attach, compare, send } from "/widget.js";

const KEY = "livealign.apiKey"; // sessionStorage only: never in the page, never stored long
const log = document.getElementById("log");
const form = document.getElementById("ask");
const prompt = document.getElementById("prompt");
const errorBox = document.getElementById("error");
const keyButton = document.getElementById("key");

let conversationId = newConversation();
let history = []; // the messages the next turn continues
let mode = "chat";
let served = "livealign";
let versions = []; // adapter versions GET /v1/models lists (for compare mode)
let answers = 0;

function newConversation() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return "conv-" + Array.from(bytes, (x) => x.toString(16).padStart(2, "0")).join("");
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = sessionStorage.getItem(KEY);
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

function askForKey() {
  const key = window.prompt("This server needs an API key. It is kept in this tab only.");
  if (key) sessionStorage.setItem(KEY, key.trim());
  keyButton.hidden = false;
  return Boolean(key);
}

keyButton.addEventListener("click", askForKey);

async function loadModels() {
  const res = await fetch("/v1/models", { headers: headers() });
  if (res.status === 401 && askForKey()) return loadModels();
  if (!res.ok) return;
  const body = await res.json();
  served = body.data[0]?.id ?? served;
  versions = body.data.slice(1).map((m) => m.id);
}

document.querySelectorAll("[data-mode]").forEach((b) =>
  b.addEventListener("click", () => {
    mode = b.dataset.mode;
    document.querySelectorAll("[data-mode]").forEach((o) => o.setAttribute("aria-checked", String(o === b)));
    document.body.dataset.mode = mode;
  }),
);

prompt.addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey) {
    ev.preventDefault();
    form.requestSubmit();
  }
});

form.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const text = prompt.value.trim();
  if (!text) return;
  prompt.value = "";
  errorBox.textContent = "";
  const messages = [...history, { role: "user", content: text }];
  const turn = el("section", "turn");
  turn.append(el("div", "user", text));
  const list = el("div", "answers");
  turn.append(list);
  log.append(turn);
  try {
    if (mode === "compare") await compareTurn(list, messages);
    else await chatTurn(list, messages);
  } catch (err) {
    errorBox.textContent = String(err.message || err);
  }
});

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

// One streamed answer into `card`'s text; resolves to its ids and text.
async function stream(messages, card, model = served) {
  const res = await fetch("/v1/chat/completions", {
    method: "POST",
    headers: headers(),
    body: JSON.stringify({ model, messages, stream: true, conversation_id: conversationId }),
  });
  if (res.status === 401 && askForKey()) return stream(messages, card, model);
  if (!res.ok) {
    const body = await res.json().catch(() => ({}));
    throw new Error(body.error?.message || `chat failed: ${res.status}`);
  }
  const info = {
    responseId: res.headers.get("X-LiveAlign-Response-Id"),
    token: res.headers.get("X-LiveAlign-Feedback-Token"),
    adapter: res.headers.get("X-LiveAlign-Adapter"),
    arm: res.headers.get("X-LiveAlign-Arm"),
  };
  const text = card.querySelector(".text");
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffered = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffered += value;
    const lines = buffered.split("\n");
    buffered = lines.pop();
    for (const line of lines) {
      if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
      const chunk = JSON.parse(line.slice(6));
      text.textContent += chunk.choices?.[0]?.delta?.content ?? "";
    }
  }
  card.dataset.responseId = info.responseId;
  card.dataset.done = "true";
  return { ...info, text: text.textContent };
}

function answerCard(title) {
  answers += 1;
  const card = el("article", "answer");
  const heading = el("h2", null, title);
  heading.id = `answer-title-${answers}`;
  card.setAttribute("aria-labelledby", heading.id);
  const text = el("div", "text");
  text.id = `answer-${answers}`;
  card.append(heading, text);
  return card;
}

async function chatTurn(list, messages) {
  const card = answerCard("Answer");
  list.append(card);
  const answer = await stream(messages, card);
  history = [...messages, { role: "assistant", content: answer.text }];
  const widget = document.createElement("livealign-feedback");
  widget.setAttribute("response-id", answer.responseId);
  widget.setAttribute("token", answer.token);
  widget.setAttribute("for", card.querySelector(".text").id);
  widget.addEventListener("livealign-feedback", (ev) => {
    if (ev.detail.kind === "edit") history[history.length - 1].content = ev.detail.value;
  });
  const again = el("button", null, "Regenerate");
  again.type = "button";
  again.addEventListener("click", async () => {
    send(answer.responseId, answer.token, "click", "regenerate");
    again.disabled = true;
    card.classList.add("older");
    card.querySelector("h2").textContent = "Earlier answer";
    await chatTurn(list, messages); // a sibling: the same prompt, the same conversation
  });
  card.append(widget, again);
}

function shuffled(pair) {
  return Math.random() < 0.5 ? pair : [pair[1], pair[0]];
}

async function compareTurn(list, messages) {
  list.classList.add("pair");
  // Two versions where a canary runs (each pinned by its name), else two samples.
  const models = versions.length >= 2 ? shuffled(versions.slice(0, 2)) : [served, served];
  const cards = [answerCard("Answer A"), answerCard("Answer B")];
  list.append(...cards);
  const [a, b] = await Promise.all(cards.map((card, i) => stream(messages, card, models[i])));
  [a, b].forEach((x, i) => attach(cards[i].querySelector(".text"), x));
  const votes = el("div", "votes");
  votes.setAttribute("role", "group");
  votes.setAttribute("aria-label", "Which answer is better?");
  const choices = [
    ["better", "A is better"],
    ["worse", "B is better"],
    ["tie", "Tie"],
    ["both_bad", "Both are bad"],
  ];
  for (const [verdict, label] of choices) {
    const button = el("button", null, label);
    button.type = "button";
    button.dataset.verdict = verdict;
    button.addEventListener("click", () => {
      compare(a, b, verdict); // the verdict is on A, against B
      votes.querySelectorAll("button").forEach((v) => {
        v.disabled = true;
        v.setAttribute("aria-pressed", String(v === button));
      });
      [a, b].forEach((x, i) => {
        cards[i].querySelector("h2").textContent =
          `Answer ${"AB"[i]}: ${x.adapter}${x.arm && x.arm !== "stable" ? ` (${x.arm})` : ""}`;
      });
      const kept = verdict === "worse" ? b : a;
      history = [...messages, { role: "assistant", content: kept.text }];
      list.dataset.voted = verdict;
    });
    votes.append(button);
  }
  list.append(votes);
}

loadModels().catch(() => {});
