// The review page: the queue from /review/queue, judgements posted to /review/actions (stored in SQLite
// before the reply), undo by retract events. Every product string is put in the page as text, never as HTML.
"use strict";

const state = {cards: [], total: 0, offset: 0, focus: 0, tagFocus: 0, history: [], needsName: false,
               categories: []};
const $ = (id) => document.getElementById(id);
const form = $("filters");

function newId() {
  return (crypto.randomUUID ? crypto.randomUUID() : Date.now() + "-" + Math.random().toString(16).slice(2));
}

function say(text) { $("status").textContent = text || ""; }

async function api(path, body) {
  const opts = body === undefined ? {} : {method: "POST", headers: {"Content-Type": "application/json"},
                                          body: JSON.stringify(body)};
  const reply = await fetch(path, {credentials: "same-origin", ...opts});
  const data = reply.status === 204 ? {} : await reply.json();
  if (!reply.ok) {
    const detail = typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail);
    throw new Error(detail || reply.statusText);
  }
  return data;
}

function filters() {
  const f = new FormData(form), q = new URLSearchParams();
  for (const name of ["key", "category", "min_score", "max_score", "order"]) if (f.get(name)) q.set(name, f.get(name));
  if (f.get("unreviewed")) q.set("unreviewed", "true");
  return q;
}

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

function renderCard(card, index) {
  const node = el("article", "card" + (card.reviewed ? " reviewed" : "") + (index === state.focus ? " focused" : ""));
  node.dataset.id = card.id;
  if (card.has_photo) {
    const img = el("img");
    img.alt = card.title;
    img.src = "/review/photo/" + encodeURIComponent(card.id);
    img.onerror = () => img.replaceWith(el("div", "nophoto", "no photo"));
    node.append(img);
  } else node.append(el("div", "nophoto", "no photo"));
  node.append(el("h3", "title", card.title), el("p", "desc", card.description));
  node.append(categoryLine(card));
  const list = el("ul", "tags");
  card.tags.forEach((t, i) => {
    const judged = t.judged === true ? " accepted" : t.judged === false ? " rejected" : "";
    const focused = index === state.focus && i === state.tagFocus ? " focused" : "";
    const item = el("li", "tag" + (t.suggested ? " suggested" : "") + judged + focused);
    item.dataset.tag = t.tag;
    const yes = el("button", "accept", "\u2713"), no = el("button", "reject", "\u2717");
    yes.title = "accept (y)"; no.title = "reject (n)";
    yes.onclick = () => judge(card, [t.tag], "accept");
    no.onclick = () => judge(card, [t.tag], "reject");
    const buttons = el("span");
    buttons.append(yes, no);
    item.append(el("span", "name", t.tag), el("span", "score", `${t.score.toFixed(2)} ${t.source}`), buttons);
    list.append(item);
  });
  node.append(list);
  const all = el("button", "accept-all", "Accept all (a)");
  all.onclick = () => acceptAll(card);
  const add = el("form", "add"), input = el("input");
  input.setAttribute("list", "vocab");
  input.placeholder = "add a tag (key:value)";
  add.append(input, el("button", "", "Add"));
  add.onsubmit = (ev) => { ev.preventDefault(); if (input.value.trim()) judge(card, [input.value.trim()], "add"); };
  node.append(all, add);
  node.onclick = () => { if (state.focus !== index) { state.focus = index; state.tagFocus = 0; render(); } };
  return node;
}

// The category is judged as the tag `category:NAME`: accept it, or pick the right one (reject + add).
function categoryLine(card) {
  const line = el("p", "category");
  const runners = card.category_top.slice(1, 3).map(([c, s]) => `${c} ${s.toFixed(2)}`).join(", ");
  const tag = "category:" + card.category, judged = card.category_judged;
  line.append(el("span", "predicted" + (judged === true ? " accepted" : judged === false ? " rejected" : ""),
                 `${card.category} ${card.category_score.toFixed(2)}` + (runners ? ` (then ${runners})` : "")));
  const ok = el("button", "accept-category", "\u2713");
  ok.title = "the category is right (c)";
  ok.onclick = () => judge(card, [tag], "accept");
  const pick = el("select", "correct-category");
  pick.append(el("option", "", "correct it\u2026"));
  for (const c of state.categories) if (c !== card.category) { const o = el("option", "", c); o.value = c; pick.append(o); }
  pick.onchange = () => { if (pick.value) correctCategory(card, pick.value); };
  line.append(ok, pick);
  if (card.corrected) line.append(el("span", "corrected", " \u2192 " + card.corrected));
  return line;
}

async function correctCategory(card, name) {
  const wrong = "category:" + card.category, right = "category:" + name;
  const actions = [{event_id: newId(), product: card.id, tag: wrong, action: "reject"},
                   {event_id: newId(), product: card.id, tag: right, action: "add"}];
  if (await post(actions, [[card.id, wrong, card.category_judged], [card.id, right, null]])) {
    card.category_judged = false;
    card.corrected = name;
    say(`${card.id}: category ${name}.`);
    render();
    refreshCounters();
  }
}

function render() {
  const main = $("cards");
  main.replaceChildren(...state.cards.map(renderCard));
  $("more").hidden = state.cards.length >= state.total;
}

function showCounters(c, modelId) {
  $("reviewed").textContent = c.reviewed;
  $("remaining").textContent = c.remaining;
  $("acceptance").textContent = c.acceptance_rate === null ? "-" : (100 * c.acceptance_rate).toFixed(1) + "%";
  if (modelId) $("model").textContent = modelId;
}

async function load(append) {
  const q = filters();
  q.set("offset", append ? state.cards.length : 0);
  try {
    const data = await api("/review/queue?" + q);
    state.cards = append ? state.cards.concat(data.cards) : data.cards;
    state.total = data.total;
    if (!append) { state.focus = 0; state.tagFocus = 0; }
    showCounters(data.counters);
    render();
  } catch (e) { say("could not load the queue: " + e.message); }
}

async function refreshCounters() {
  try { showCounters((await api("/review/queue?limit=1&" + filters())).counters); } catch (e) { /* next load */ }
}

function reviewer() { return new FormData(form).get("reviewer") || null; }

function setJudged(productId, tag, value) {
  const card = state.cards.find((c) => c.id === productId);
  if (!card) return;
  if (tag.startsWith("category:")) {
    if (tag === "category:" + card.category) card.category_judged = value === undefined ? null : value;
    return;
  }
  let t = card.tags.find((x) => x.tag === tag);
  if (!t && value !== undefined) {
    t = {tag, score: 1, source: "feedback", suggested: false, judged: value};
    card.tags.push(t);
  }
  if (t) t.judged = value === undefined ? null : value;
  card.reviewed = card.tags.some((x) => x.judged !== null && x.judged !== undefined);
}

async function post(actions, before) {
  if (state.needsName && !reviewer()) { say("Give your name first."); form.reviewer.focus(); return false; }
  try {
    const reply = await api("/review/actions", {reviewer: reviewer(), actions});
    if (reply.refused.length) say(reply.refused.map((r) => r.reason).join("; ")); else say("");
  } catch (e) { say(e.message); return false; }
  state.history.push({actions, before});
  return true;
}

async function judge(card, tags, action) {
  const before = tags.map((tag) => [card.id, tag, (card.tags.find((t) => t.tag === tag) || {}).judged]);
  const actions = tags.map((tag) => ({event_id: newId(), product: card.id, tag, action}));
  if (await post(actions, before)) {
    tags.forEach((tag) => setJudged(card.id, tag, action !== "reject"));
    render();
    refreshCounters();
  }
}

function acceptAll(card) {
  const open = card.tags.filter((t) => !t.suggested && t.judged !== true).map((t) => t.tag);
  if (open.length) judge(card, open, "accept");
}

async function undo() {
  const last = state.history.pop();
  if (!last) { say("Nothing to undo."); return; }
  const actions = last.actions.map((a) => ({event_id: "undo-" + a.event_id, product: a.product, tag: a.tag,
                                            action: "retract"}));
  try {
    await api("/review/actions", {reviewer: reviewer(), actions});
  } catch (e) { state.history.push(last); say(e.message); return; }
  last.before.forEach(([pid, tag, judged]) => setJudged(pid, tag, judged === null ? undefined : judged));
  say(`Undone: ${last.actions.length} judgement(s).`);
  render();
  refreshCounters();
}

async function bulkReject(key) {
  key = key || prompt("Reject every shown tag of which key, across the filtered queue?");
  if (!key) return;
  if (state.needsName && !reviewer()) { say("Give your name first."); return; }
  const f = Object.fromEntries(filters());
  const body = {key, request_id: newId(), reviewer: reviewer(), category: f.category || null,
                min_score: +(f.min_score || 0), max_score: +(f.max_score || 1), unreviewed: !!f.unreviewed};
  try {
    const {count} = await api("/review/reject-key", body);
    if (!count) { say(`No shown "${key}" tag in the filtered queue.`); return; }
    if (!confirm(`Reject ${count} "${key}" tags across the filtered queue?`)) return;
    const reply = await api("/review/reject-key", {...body, expected: count});
    const actions = reply.pairs.map(([product, tag], i) => ({event_id: reply.event_ids[i], product, tag}));
    state.history.push({actions, before: reply.pairs.map(([pid, tag]) => [pid, tag, null])});
    say(`Rejected ${reply.count} "${key}" tags.`);
    await load(false);
  } catch (e) { say(e.message); }
}

function focusedCard() { return state.cards[state.focus]; }

function onKey(ev) {
  if (ev.target.closest("input, select, textarea") || ev.ctrlKey || ev.metaKey || ev.altKey) {
    if (ev.key === "Escape") ev.target.blur();
    return;
  }
  const card = focusedCard(), tag = card && card.tags[state.tagFocus];
  const moves = {j: [1, 0], k: [-1, 0], l: [0, 1], h: [0, -1]};
  if (moves[ev.key] && card) {
    const [dc, dt] = moves[ev.key];
    state.focus = Math.max(0, Math.min(state.cards.length - 1, state.focus + dc));
    state.tagFocus = dc ? 0 : Math.max(0, Math.min(focusedCard().tags.length - 1, state.tagFocus + dt));
    render();
    document.querySelector(".card.focused")?.scrollIntoView({block: "nearest"});
  } else if (ev.key === "y" && tag) judge(card, [tag.tag], "accept");
  else if (ev.key === "n" && tag) judge(card, [tag.tag], "reject");
  else if (ev.key === "a" && card) acceptAll(card);
  else if (ev.key === "c" && card) judge(card, ["category:" + card.category], "accept");
  else if (ev.key === "t" && card) { ev.preventDefault(); document.querySelector(".card.focused .add input")?.focus(); }
  else if (ev.key === "u") undo();
  else if (ev.key === "b") bulkReject(tag ? tag.tag.split(":")[0] : null);
  else return;
  ev.preventDefault();
}

function fill(select, values) {
  for (const v of values) { const o = el("option", "", v); o.value = v; select.append(o); }
}

async function start() {
  try {
    const v = await api("/review/vocab");
    fill(form.key, [...new Set(v.tags.map((t) => t.split(":")[0]))].sort());
    fill(form.category, v.categories);
    state.categories = v.categories;
    $("vocab").replaceChildren(...v.tags.map((t) => { const o = el("option"); o.value = t; return o; }));
    $("model").textContent = v.model_id;
    state.needsName = v.needs_name;
    $("name-field").hidden = !v.needs_name;
    form.reviewer.value = localStorage.getItem("mmtags-reviewer") || "";
    if (v.adapted) {
      const held = (v.adapted.gate || {}).feedback_holdout || {};
      $("adapted").hidden = false;
      $("adapted").textContent = `adapted from ${v.adapted.parent_model_id} on ${v.adapted.judged_products} ` +
        `judged products; held back ${v.adapted.held_back}: tag F1 ${fmt(held.parent_tag_f1)} -> ` +
        `${fmt(held.adapted_tag_f1)}; ${v.adapted.promoted ? "promoted (live)" : "not promoted"}`;
    }
  } catch (e) { say("could not load the vocabulary: " + e.message); }
  await load(false);
}

function fmt(x) { return typeof x === "number" ? x.toFixed(4) : "-"; }

form.addEventListener("submit", (ev) => { ev.preventDefault(); load(false); });
form.reviewer.addEventListener("change", () => localStorage.setItem("mmtags-reviewer", form.reviewer.value));
$("undo").onclick = undo;
$("bulk").onclick = () => bulkReject(null);
$("more").onclick = () => load(true);
document.addEventListener("keydown", onKey);
start();
