// docraft's admin page: reads /_admin/cluster and /_admin/alerts with the person's token about once a second
// and draws them. Plain script, no build step. Every value from the server is set as text (textContent),
// never as HTML; the page's Content-Security-Policy allows no inline script or style anyway.
"use strict";

const TOKEN_KEY = "docraft.admin.token"; // in sessionStorage only: gone when the tab closes
const REFRESH_MS = 1000;
const RECENT_SHOWN = 20;

let timer = null;
let session = 0; // counts sign-ins: a refresh from an earlier one draws nothing and schedules nothing
let previous = null; // {at: ms, applied: {shard: index}}: the last refresh, for throughput

function byId(id) {
  return document.getElementById(id);
}

// An element with a class (or none) and children: strings become text nodes.
function el(tag, className, ...children) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  node.append(...children.map(shown));
  return node;
}

function shown(value) {
  if (value instanceof Node) return value;
  return value === null || value === undefined ? "–" : String(value);
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

async function getJSON(path) {
  const response = await fetch(path, {
    headers: { Authorization: `Bearer ${token()}` },
    cache: "no-store",
    credentials: "omit",
  });
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const error = new Error(body?.error?.message ?? `${path} answered ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

function setStatus(text, failing) {
  const status = byId("status");
  status.textContent = text;
  status.classList.toggle("failing", failing);
}

// One refresh of sign-in ``mine``; the next is scheduled when this one is done, so they never overlap.
async function refresh(mine) {
  timer = null;
  try {
    const [cluster, alerts] = await Promise.all([getJSON("/_admin/cluster"), getJSON("/_admin/alerts")]);
    if (mine !== session) return;
    render(cluster, alerts, performance.now());
    setStatus(`updated ${new Date().toLocaleTimeString()}`, false);
  } catch (error) {
    if (mine !== session) return;
    if (error.status === 401 || error.status === 403) {
      forget(error.message);
      return;
    }
    setStatus(`not updated: ${error.message}`, true);
  }
  timer = setTimeout(refresh, REFRESH_MS, mine);
}

function render(cluster, alerts, now) {
  const applied = Object.fromEntries(cluster.shards.map((shard) => [shard.id, appliedIndex(shard)]));
  const seconds = previous === null ? null : (now - previous.at) / 1000;
  const rates = {};
  for (const [id, index] of Object.entries(applied)) {
    const before = previous?.applied[id];
    // A restarted leader may report less than before: no rate for that interval.
    rates[id] = seconds && index !== null && before != null && index >= before ? (index - before) / seconds : null;
  }
  previous = { at: now, applied };
  const flagged = new Set(alerts.active.map((alert) => alert.replica).filter(Boolean));
  byId("summary").replaceChildren(...summary(cluster, alerts, rates));
  byId("alerts").replaceChildren(alertList(alerts));
  byId("shards").replaceChildren(...cluster.shards.map((shard) => shardView(shard, rates[shard.id], flagged)));
  byId("moves-section").hidden = cluster.moves.length === 0;
  byId("moves").replaceChildren(movesTable(cluster.moves));
}

// The group's progress: the highest index any of its replicas applied (the leader's, normally).
function appliedIndex(shard) {
  const indexes = shard.replicas.map((r) => r.applied_index).filter((i) => Number.isInteger(i));
  return indexes.length ? Math.max(...indexes) : null;
}

function rate(value) {
  return value === null || value === undefined ? "–" : value.toFixed(1);
}

function summary(cluster, alerts, rates) {
  const replicas = cluster.shards.reduce((n, shard) => n + shard.replicas.length, 0);
  const known = Object.values(rates).filter((r) => r !== null);
  const total = known.length ? known.reduce((a, b) => a + b, 0) : null;
  const fact = (label, value, id) => {
    const number = el("span", "value", value);
    if (id) number.id = id;
    return el("div", "fact", el("span", "label", label), number);
  };
  return [
    fact("slot map epoch", cluster.epoch),
    fact("shards", cluster.shards.length),
    fact("replicas", replicas),
    fact("active alerts", alerts.active.length, "active-alert-count"),
    fact("entries applied / s", rate(total), "throughput"),
  ];
}

function alertList(alerts) {
  const recent = alerts.recent.filter((alert) => !alert.active).slice(0, RECENT_SHOWN);
  const list = el("div", "alert-list");
  if (alerts.active.length === 0) list.append(el("p", "quiet", "No active alerts."));
  list.append(...alerts.active.map(alertView));
  if (recent.length) list.append(el("h3", null, "Recent (cleared)"), ...recent.map(alertView));
  return list;
}

function alertView(alert) {
  const where = alert.replica ? `shard ${alert.shard}, replica ${alert.replica}` : `shard ${alert.shard}`;
  const when = alert.active ? `raised ${time(alert.raised_at)}` : `raised ${time(alert.raised_at)}, cleared ${time(alert.cleared_at)}`;
  const view = el(
    "article",
    `alert ${alert.active ? "active" : "cleared"}`,
    el("h4", null, `${alert.kind} — ${where}`),
    el("p", null, alert.message),
    el("p", "meta", `${when}${alert.index === null ? "" : `, at index ${alert.index}`}`),
  );
  view.dataset.kind = alert.kind;
  view.dataset.shard = alert.shard;
  if (alert.replica) view.dataset.replica = alert.replica;
  const digests = Object.entries(alert.digests ?? {});
  if (digests.length) {
    const rows = digests.map(([replica, digest]) => {
      const cell = el("td", "digest", digest.slice(0, 16));
      cell.title = digest;
      return el("tr", null, el("td", null, replica), cell);
    });
    view.append(table(["replica", "digest"], rows, "digests"));
  }
  return view;
}

function time(seconds) {
  return seconds === null || seconds === undefined ? "–" : new Date(seconds * 1000).toLocaleTimeString();
}

function shardView(shard, shardRate, flagged) {
  const ranges = shard.slots.map(([first, last]) => (first === last ? `${first}` : `${first}–${last}`)).join(", ");
  const facts = [
    `slots ${ranges || "none"} (${shard.slot_count})`,
    `leader ${shown(shard.leader)}`,
    `${shown(shard.documents)} documents`,
    `epoch ${shown(shard.epoch)}`,
    `${rate(shardRate)} entries applied / s`,
  ];
  const rows = shard.replicas.map((replica) => replicaRow(replica, flagged.has(replica.id)));
  const header = ["replica", "role", "mode", "term", "applied", "commit", "lag", "fault"];
  const view = el("section", "shard", el("h3", null, `shard ${shard.id}`), el("p", "meta", facts.join(" · ")));
  view.append(table(header, rows, "replicas"));
  view.dataset.shard = shard.id;
  return view;
}

function replicaRow(replica, isFlagged) {
  const fault = replica.fault ? replica.fault.kind ?? "yes" : null;
  const row = el(
    "tr",
    `role-${replica.role}${isFlagged ? " flagged" : ""}`,
    ...[replica.id, replica.role, replica.mode, replica.term, replica.applied_index, replica.commit_index,
      replica.lag_entries, fault].map((value) => el("td", null, shown(value))),
  );
  row.dataset.replica = replica.id;
  row.dataset.role = replica.role;
  if (replica.error) row.title = replica.error;
  return row;
}

function movesTable(moves) {
  const rows = moves.map((move) => {
    const slots = (move.slots ?? []).map(([first, last]) => `${first}–${last}`).join(", ");
    const copied = `${shown(move.docs_copied)}/${shown(move.docs_total)}`;
    return el("tr", null, ...[move.id, slots, move.from, move.to, move.state, copied, move.epoch].map((v) => el("td", null, shown(v))));
  });
  return table(["move", "slots", "from", "to", "state", "copied", "epoch"], rows, "moves");
}

function table(header, rows, className) {
  return el(
    "table",
    className,
    el("thead", null, el("tr", null, ...header.map((name) => el("th", null, name)))),
    el("tbody", null, ...rows),
  );
}

function start() {
  byId("login").hidden = true;
  byId("dashboard").hidden = false;
  byId("forget").hidden = false;
  setStatus("loading…", false);
  previous = null;
  session += 1;
  refresh(session);
}

function forget(reason) {
  session += 1;
  sessionStorage.removeItem(TOKEN_KEY);
  if (timer !== null) clearTimeout(timer);
  timer = null;
  byId("dashboard").hidden = true;
  byId("forget").hidden = true;
  byId("login").hidden = false;
  byId("login-error").textContent = reason ?? "";
  setStatus("", false);
  byId("token").focus();
}

document.addEventListener("DOMContentLoaded", () => {
  byId("login").addEventListener("submit", (event) => {
    event.preventDefault(); // the token never goes into a URL or a form post
    const input = byId("token");
    sessionStorage.setItem(TOKEN_KEY, input.value.trim());
    input.value = "";
    byId("login-error").textContent = "";
    start();
  });
  byId("forget").addEventListener("click", () => forget());
  if (token()) start();
  else forget();
});
