// The search and QA page: calls POST /search and POST /qa, highlights the query's terms in each hit.
"use strict";

const $ = (id) => document.getElementById(id);
const STOPWORDS = new Set(("a an and are as at be by for from has have how in is it of on or that the this " +
  "to was were what when where which who why with does do did can").split(" "));
const SNIPPET = 400;

function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
}

// Terms worth highlighting: the query's words, lower-cased, without stopwords and one-letter words.
function queryTerms(query) {
  const words = query.toLowerCase().match(/[\p{L}\p{N}]+/gu) || [];
  return [...new Set(words.filter((w) => w.length > 1 && !STOPWORDS.has(w)))];
}

// Escape the text, then wrap every word that starts with a query term in <mark>.
function highlight(text, terms) {
  const safe = escapeHtml(text);
  if (!terms.length) return safe;
  const pattern = terms.map((t) => t.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")).join("|");
  return safe.replace(new RegExp(`(?<![\\p{L}\\p{N}])(${pattern})[\\p{L}\\p{N}]*`, "giu"), (m) => `<mark>${m}</mark>`);
}

async function post(path, body) {
  const response = await fetch(path, {method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify(body)});
  const data = await response.json().catch(() => ({detail: response.statusText}));
  if (!response.ok) throw new Error(`${response.status}: ${data.detail || response.statusText}`);
  return data;
}

function showResults(data, terms) {
  const list = $("results");
  list.innerHTML = "";
  for (const hit of data.hits) {
    const item = document.createElement("li");
    item.className = "hit";
    item.id = `doc-${hit.doc_id}`;
    const text = hit.text || "";
    const shown = text.length > SNIPPET ? text.slice(0, SNIPPET) + "…" : text;
    item.innerHTML = `<div class="title">${highlight(hit.title || hit.doc_id, terms)}</div>` +
      `<div class="text">${highlight(shown, terms)}</div>` +
      `<div class="meta">doc ${escapeHtml(hit.doc_id)} · score ${hit.score.toFixed(3)}</div>`;
    list.appendChild(item);
  }
  $("status").className = "status";
  $("status").textContent = `${data.hits.length} results from ${data.retriever}` +
    `${data.reranked ? " (reranked)" : ""} in ${data.took_ms.toFixed(0)} ms`;
}

function showAnswer(data) {
  $("answer-box").hidden = false;
  $("answer").textContent = data.answer;
  $("route").textContent = `route: ${data.route}`;
  $("citations").innerHTML = data.citations.length
    ? "Sources: " + data.citations.map((c) => `<a href="#doc-${escapeHtml(c)}">[${escapeHtml(c)}]</a>`).join("")
    : "";
}

async function run(event) {
  event.preventDefault();
  const query = $("query").value.trim();
  if (!query) return;
  const terms = queryTerms(query);
  $("status").className = "status";
  $("status").textContent = "searching…";
  $("answer-box").hidden = true;
  const search = post("/search", {query, retriever: $("retriever").value, k: 10, rerank: $("rerank").checked})
    .then((data) => showResults(data, terms))
    .catch((err) => { $("results").innerHTML = ""; $("status").className = "status error"; $("status").textContent = err.message; });
  const mode = $("mode").value;
  const answer = mode === "off" ? Promise.resolve() : post("/qa", {question: query, mode})
    .then(showAnswer)
    .catch((err) => { $("answer-box").hidden = false; $("answer").textContent = err.message; $("route").textContent = ""; });
  await Promise.all([search, answer]);
}

async function checkHealth() {
  try {
    const response = await fetch("/health");
    const data = await response.json();
    $("health").textContent = data.ready ? `ready · ${Object.keys(data.indexes).join(", ")}${data.qa ? " · QA" : ""}`
      : `not ready: ${data.problems.join("; ")}`;
    $("health").className = data.ready ? "health ready" : "health down";
  } catch (err) {
    $("health").textContent = "server unreachable";
    $("health").className = "health down";
  }
}

$("search-form").addEventListener("submit", run);
checkHealth();
