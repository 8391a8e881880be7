// The dynamicrag page: asks the server's own HTTP API (POST v1/answer, GET health) and shows
// the answer, k, the chosen passages in order, the unchosen ones greyed, and the timings.
// Text from the server is always set with textContent, never parsed as HTML.
"use strict";

const KEY_STORAGE = "dynamicrag.apiKey"; // sessionStorage: gone when the tab closes
const $ = (id) => document.getElementById(id);

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function seconds(ms) {
  return ms >= 1000 ? (ms / 1000).toFixed(1) + " s" : Math.round(ms) + " ms";
}

function passageItem(passage, position, rank) {
  const item = el("li", "passage " + (rank ? "chosen" : "unchosen"));
  item.dataset.id = passage.id;
  item.dataset.position = String(position);
  const head = el("div", "head");
  head.append(el("span", "rank", rank ? "#" + rank : String(position) + "."));
  head.append(el("span", "pid", "[" + position + "] " + passage.id));
  if (passage.title) head.append(document.createTextNode(" — " + passage.title));
  item.append(head, el("p", "text", passage.text));
  return item;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}

function render(out) {
  const chosen = new Map(out.positions.map((position, i) => [position, i + 1]));
  $("answer").textContent = out.answer !== null ? out.answer : "(no answer: " + out.error + ")";
  $("k").textContent = "k = " + out.k + " of " + out.candidates.length + " passages chosen";
  $("reranker").textContent = "reranker output " + JSON.stringify(out.raw) + (out.well_formed ? "" : " (malformed)");
  const t = out.timings;
  $("timings").textContent =
    "reranker " + seconds(t.rerank_ms) + " · answer " + seconds(t.generate_ms) +
    " · retrieval " + seconds(t.retrieve_ms) + " · queue " + seconds(t.queue_ms) +
    " · total " + seconds(t.total_ms) + (t.batch_size > 1 ? " (batch of " + t.batch_size + ")" : "");
  $("chosen").replaceChildren(...out.positions.map((position, i) => passageItem(out.candidates[position - 1], position, i + 1)));
  $("unchosen").replaceChildren(
    ...out.candidates.map((p, i) => [p, i + 1]).filter(([, position]) => !chosen.has(position))
      .map(([p, position]) => passageItem(p, position, 0)));
  $("result").hidden = false;
}

async function ask(event) {
  event.preventDefault();
  const question = $("question").value.trim();
  if (!question) return;
  const key = $("api-key").value.trim();
  if (key) sessionStorage.setItem(KEY_STORAGE, key); else sessionStorage.removeItem(KEY_STORAGE);
  const body = { question };
  const own = $("passages").value.split(/\n\s*\n/).map((text) => text.trim()).filter(Boolean);
  if (own.length) body.passages = own.map((text) => ({ text }));
  const headers = { "Content-Type": "application/json" };
  if (key) headers.Authorization = "Bearer " + key;

  $("error").hidden = true;
  $("ask").disabled = true;
  document.body.dataset.state = "waiting";
  const started = performance.now();
  const tick = setInterval(() => {
    $("status").textContent = "reranking and answering… " + ((performance.now() - started) / 1000).toFixed(0) + " s";
  }, 250);
  try {
    const response = await fetch("v1/answer", { method: "POST", headers, body: JSON.stringify(body) });
    const out = await response.json().catch(() => null);
    if (!response.ok) {
      const message = out && out.error ? out.error.message : response.statusText;
      showError(response.status + ": " + message);
      $("result").hidden = true;
      if (response.status === 401) $("api-key").focus();
      return;
    }
    render(out);
  } catch (err) {
    showError("the server did not answer: " + err);
  } finally {
    clearInterval(tick);
    $("status").textContent = "";
    $("ask").disabled = false;
    document.body.dataset.state = "done";
  }
}

async function showServer() {
  try {
    const health = await (await fetch("health")).json();
    $("server").textContent = "model " + health.model.split("/").pop() + " · " +
      (health.index ? "answers from the server's index" : "no index on the server: give your own passages below");
    if (!health.index) $("own").open = true;
  } catch (err) {
    $("server").textContent = "the server is not answering (" + err + ")";
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("api-key").value = sessionStorage.getItem(KEY_STORAGE) || "";
  $("ask-form").addEventListener("submit", ask);
  showServer();
  $("question").focus();
});
