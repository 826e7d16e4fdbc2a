"use strict";
// The run page: summary numbers, the loss curve from metrics.jsonl (polled, so a run still
// training keeps drawing), the resolved config, and the test responses next to their scores.

const $ = (id) => document.getElementById(id);
const POLL_MS = 3000;
const state = { rows: [], modified: null, now: null, config: null, responses: null, responsesText: "" };

const fmt = {
  loss: (v) => (typeof v === "number" ? v.toFixed(3) : "–"),
  pct: (v) => (typeof v === "number" ? `${(v * 100).toFixed(1)}%` : "–"),
  int: (v) => (typeof v === "number" ? v.toLocaleString("en-US") : "–"),
};

function xKey() {
  return document.querySelector('input[name="x-axis"]:checked').value;
}

// ---- summary cards -----------------------------------------------------------------

function renderCards() {
  const rows = state.rows;
  const last = rows.at(-1) || {};
  const lastOf = (key) => [...rows].reverse().find((r) => typeof r[key] === "number")?.[key];
  const vals = rows.map((r) => r.val_loss).filter((v) => typeof v === "number");
  const doc = state.responses || {};
  const metrics = doc.metrics || {};
  const cards = [
    ["Steps", fmt.int(last.step)],
    ["Epoch", typeof last.epoch === "number" ? last.epoch.toFixed(2) : "–"],
    ["Tokens seen", typeof last.tokens_seen === "number" ? compact(last.tokens_seen) : "–"],
    ["Train loss", fmt.loss(lastOf("train_loss"))],
    ["Val loss (best)", fmt.loss(vals.length ? Math.min(...vals) : undefined)],
  ];
  if (doc.scores_file) {
    cards.push(["Exact match", fmt.pct(metrics.exact_match)], ["ROUGE-L", fmt.pct(metrics.rouge_l)]);
    if (doc.judge) cards.push(["Judge mean", typeof doc.judge.mean === "number" ? doc.judge.mean.toFixed(1) : "–"]);
  }
  $("cards").replaceChildren(
    ...cards.map(([label, value]) => Ik.el("div", { class: "card" }, Ik.el("dt", {}, label), Ik.el("dd", {}, value))),
  );
}

// ---- curve -------------------------------------------------------------------------

function renderCurve() {
  drawLossChart($("curve"), state.rows, xKey());
  const evals = state.rows.filter((r) => typeof r.val_loss === "number").length;
  $("curve-desc").textContent =
    `${state.rows.length} logged steps and ${evals} validation evaluations; ` +
    `last train loss ${fmt.loss(state.rows.at(-1)?.train_loss)}.`;
}

function renderUpdated() {
  if (!state.modified) return;
  const age = Math.max(0, Math.round(state.now - state.modified));
  const ago = age < 120 ? `${age} s` : age < 7200 ? `${Math.round(age / 60)} min` : `${Math.round(age / 3600)} h`;
  $("updated").textContent = `metrics.jsonl last written ${ago} ago`;
}

async function pollMetrics() {
  const response = await Ik.fetch(`/run/data/metrics?since=${state.rows.length}`, { cache: "no-store" });
  if (!response.ok) throw new Error(await Ik.errorText(response));
  const data = await response.json();
  if (data.total < state.rows.length) { // the file was rewritten (a new run): start over
    state.rows = [];
    return pollMetrics();
  }
  const grew = data.rows.length > 0;
  state.rows = state.rows.concat(data.rows);
  state.modified = data.modified;
  state.now = data.now;
  if (grew || !state.drawn) {
    state.drawn = true;
    renderCards();
    renderCurve();
  }
  renderUpdated();
}

// ---- config ------------------------------------------------------------------------

async function loadConfig() {
  const response = await Ik.fetch("/run/data/config", { cache: "no-cache" });
  if (!response.ok) throw new Error(await Ik.errorText(response));
  const doc = await response.json();
  if (!doc.values || JSON.stringify(doc) === JSON.stringify(state.config)) return;
  state.config = doc;
  const rows = Object.entries(doc.values).map(([key, value]) =>
    Ik.el("tr", {}, Ik.el("th", { scope: "row" }, key),
      Ik.el("td", {}, typeof value === "string" ? value : JSON.stringify(value))));
  $("config").replaceChildren(Ik.el("table", { "aria-label": "config.yaml" }, Ik.el("tbody", {}, ...rows)));
}

// ---- responses ---------------------------------------------------------------------

const SORTS = {
  file: { label: "file order", key: null },
  judge_desc: { label: "judge score, high first", key: "judge_score", dir: -1 },
  judge_asc: { label: "judge score, low first", key: "judge_score", dir: 1 },
  rouge_desc: { label: "ROUGE-L, high first", key: "rouge_l", dir: -1 },
  rouge_asc: { label: "ROUGE-L, low first", key: "rouge_l", dir: 1 },
};

async function loadResponses() {
  const response = await Ik.fetch("/run/data/responses", { cache: "no-cache" });
  if (!response.ok) throw new Error(await Ik.errorText(response));
  const text = await response.text();
  if (text === state.responsesText) return;
  state.responsesText = text;
  state.responses = JSON.parse(text);
  setupFilters();
  renderResponses();
  renderCards();
}

function setupFilters() {
  const records = state.responses.records;
  const family = $("family");
  const chosen = family.value;
  const families = [...new Set(records.map((r) => r.family).filter((f) => f !== undefined))].sort();
  family.replaceChildren(Ik.el("option", { value: "" }, `all (${records.length})`),
    ...families.map((f) => Ik.el("option", { value: f }, `${f} (${records.filter((r) => r.family === f).length})`)));
  family.value = families.includes(chosen) ? chosen : "";
  family.closest("label").hidden = families.length === 0;
  const sort = $("sort");
  const sorted = sort.value;
  const usable = Object.entries(SORTS).filter(([, s]) => !s.key || records.some((r) => typeof r[s.key] === "number"));
  sort.replaceChildren(...usable.map(([value, s]) => Ik.el("option", { value }, s.label)));
  sort.value = usable.some(([value]) => value === sorted) ? sorted : "file";
  sort.closest("label").hidden = usable.length === 1;
  const groups = state.responses.metrics?.groups;
  const judged = state.responses.judge?.groups || {};
  const judgeOf = (name) => (typeof judged[name]?.mean === "number" ? `, judge ${judged[name].mean.toFixed(1)}` : "");
  $("group-scores").textContent = groups
    ? "By family (ROUGE-L): " +
      Object.entries(groups).map(([name, g]) => `${name} ${fmt.pct(g.rouge_l)}${judgeOf(name)}`).join(" · ")
    : "";
}

function visibleRecords() {
  const family = $("family").value;
  const query = $("search").value.trim().toLowerCase();
  const sort = SORTS[$("sort").value] || SORTS.file;
  let records = state.responses.records.map((record, index) => ({ ...record, index }));
  if (family) records = records.filter((r) => r.family === family);
  if (query) {
    records = records.filter((r) =>
      [r.instruction, r.input, r.output, r.model_response].some((t) => String(t ?? "").toLowerCase().includes(query)));
  }
  if (sort.key) {
    const score = (r) => (typeof r[sort.key] === "number" ? r[sort.key] : null);
    records.sort((a, b) => {
      const [x, y] = [score(a), score(b)];
      if (x === null || y === null) return (x === null) - (y === null); // unscored last
      return sort.dir * (x - y) || a.index - b.index;
    });
  }
  return records;
}

function scoreCell(record) {
  const cell = Ik.el("td", { class: "scores", "data-label": "Scores" });
  if (state.responses.scores_file && typeof record.rouge_l !== "number") {
    cell.append(Ik.el("span", { class: "score unscored" }, "not scored"));
  }
  if (typeof record.judge_score === "number") {
    const level = record.judge_score >= 80 ? "high" : record.judge_score < 50 ? "low" : "mid";
    cell.append(Ik.el("span", { class: `score judge ${level}` }, "judge ", Ik.el("b", {}, String(record.judge_score))));
  } else if (record.judge_error) {
    cell.append(Ik.el("span", { class: "score" }, "judge: error"));
  }
  if (typeof record.rouge_l === "number") {
    cell.append(Ik.el("span", { class: "score" }, "ROUGE-L ", Ik.el("b", {}, record.rouge_l.toFixed(2))));
  }
  if (record.exact_match) cell.append(Ik.el("span", { class: "score exact" }, "exact match ✓"));
  if (record.judge_reply || record.judge_error) {
    cell.append(Ik.el("details", {}, Ik.el("summary", {}, "judge's reply"), record.judge_reply || record.judge_error));
  }
  return cell;
}

function renderResponses() {
  const all = state.responses.records;
  $("no-responses").hidden = all.length > 0;
  $("responses").hidden = all.length === 0;
  const records = visibleRecords();
  const rows = records.map((r) =>
    Ik.el("tr", { class: r.exact_match ? "match" : "" },
      Ik.el("td", { class: "family", "data-label": "Family" }, r.family ?? ""),
      Ik.el("td", { class: "instruction", "data-label": "Instruction" }, r.instruction ?? "",
        r.input ? Ik.el("span", { class: "input" }, r.input) : null),
      Ik.el("td", { class: "expected", "data-label": "Expected" }, r.output ?? ""),
      Ik.el("td", { class: "response", "data-label": "Model response" }, r.model_response ?? ""),
      scoreCell(r)));
  $("responses").tBodies[0].replaceChildren(...rows);
  $("count").textContent = all.length ? `${records.length} of ${all.length} shown` : "";
}

// ---- start and poll ----------------------------------------------------------------

function showError(error) {
  $("updated").textContent = `Could not read the run: ${error.message}`;
}

async function poll() {
  if (!document.hidden) {
    await pollMetrics().catch(showError);
    state.ticks = (state.ticks || 0) + 1;
    if (state.ticks % 5 === 1) await Promise.all([loadConfig(), loadResponses()]).catch(showError);
  }
  setTimeout(poll, POLL_MS);
}

Ik.start().then((info) => {
  $("run-name").textContent = info.run || "";
  document.title = `${info.run} · instructkit`;
  $("chat-link").hidden = !info.model;
  for (const input of document.querySelectorAll('input[name="x-axis"]')) input.addEventListener("change", renderCurve);
  for (const id of ["family", "sort"]) $(id).addEventListener("change", renderResponses);
  $("search").addEventListener("input", renderResponses);
  window.addEventListener("resize", renderCurve);
  poll();
});
