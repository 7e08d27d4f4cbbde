// wstap's web UI: connections | message table | detail. It reads the control API
// (docs/control-api.md) like any other client: a page of records, then the push stream.

import { Model, isRow, payloadBytes, bytesToHex, hexToBytes, bytesToBase64 } from "./model.js";
import { VirtualTable } from "./table.js";
import { viewsFor, preferredView } from "./detail.js";

const $ = selector => document.querySelector(selector);
const model = new Model();
const state = {
  live: false,
  conn: null,          // the connection the table is narrowed to
  filterText: "",
  matches: null,       // seqs that match the filter, or null without one
  filterStream: null,
  lastTab: null,
  holds: [],
  ready: false,
};

// MARK: - The API

class APIError extends Error {
  constructor(status, body) { super(body?.error ?? `HTTP ${status}`); this.status = status; this.body = body; }
}

async function api(method, path, body, contentType = "application/json") {
  const init = { method, credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    init.body = typeof body === "string" ? body : JSON.stringify(body);
    init.headers["Content-Type"] = contentType;
  }
  const response = await fetch(path, init);
  const text = await response.text();
  let parsed = null;
  try { parsed = text ? JSON.parse(text) : null; } catch { parsed = { error: text }; }
  if (!response.ok) throw new APIError(response.status, parsed);
  return parsed;
}

function toast(text, isError = false) {
  const node = $("#toast");
  node.textContent = text;
  node.classList.toggle("error", isError);
  node.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { node.hidden = true; }, isError ? 8000 : 3000);
}

// MARK: - The table

const table = new VirtualTable({
  scroller: $("#table"), spacer: $("#table-spacer"), body: $("#table-rows"), head: $("#table-head"),
  onSelect: record => showDetail(record),
  onNewWhilePaused: count => {
    $("#new-rows").hidden = count === 0;
    $("#new-rows span").textContent = String(count);
  },
});

function visible(record) {
  if (state.conn !== null && record.conn !== state.conn) return false;
  return state.matches === null || state.matches.has(record.seq);
}

function rebuildView() {
  table.setRows(model.rows.filter(visible));
  updateCounts();
}

function updateCounts() {
  const shown = table.view.length;
  $("#counts").textContent = state.matches === null && state.conn === null ? `${shown.toLocaleString()} rows` : `${shown.toLocaleString()} of ${model.rows.length.toLocaleString()} rows`;
}

// A record from a page or the stream.
function ingest(record) {
  const row = model.add(record);
  if (row && visible(row)) table.append(row);
  if (row) scheduleSide();
  if (record.type === "diagnostic" && (record.code === "held" || record.code === "hold-released" || record.code === "held-not-sent")) refreshHolds();
  else if (record.type === "change" && record.held_ms !== undefined) refreshHolds();
  else if (record.type === "end" && state.holds.some(h => h.conn === record.conn)) refreshHolds();
  const selected = table.selectedRecord;
  // A change record that attached to the message being looked at: show it.
  if (record.type === "change" && selected && selected.change === record) showDetail(selected);
}

let countsScheduled = false;
let sideScheduled = false;
function scheduleSide() {
  if (!countsScheduled) { countsScheduled = true; requestAnimationFrame(() => { countsScheduled = false; updateCounts(); }); }
  if (sideScheduled) return;
  sideScheduled = true;
  // The connection list changes at most a few times a second, whatever the message rate.
  setTimeout(() => { sideScheduled = false; renderConnections(); }, 250);
}

// MARK: - Loading and the push stream

async function loadRecords(after, until = Infinity) {
  let more = true;
  while (more) {
    const page = await api("GET", `/api/records?after=${after}&limit=10000`);
    for (const record of page.records) { if (record.seq > until) return after; ingest(record); }
    after = page.next_after;
    more = page.more && page.records.length > 0;
  }
  return after;
}

let stream = null;
function openStream() {
  stream = new EventSource(`/api/events?after=${model.lastSeq}`);
  stream.addEventListener("record", event => ingest(JSON.parse(event.data)));
  stream.addEventListener("gap", async event => {
    // The page fell behind what the store keeps: fetch what can still be had, forget the rest.
    const gap = JSON.parse(event.data);
    const dropped = model.forgetThrough(gap.first_available - 1);
    table.dropFront(dropped);
    await loadRecords(Math.max(gap.from - 1, gap.first_available - 1), gap.to);
    rebuildView();
    toast(`The page fell behind: records ${gap.from}–${gap.first_available - 1} are no longer held`, true);
  });
  stream.onerror = () => { $("#mode").textContent = state.live ? "live · reconnecting" : $("#mode").textContent; };
  stream.onopen = () => { if (state.live) $("#mode").textContent = "live"; };
}

async function boot() {
  const status = await api("GET", "/api/status");
  state.live = status.live;
  document.body.classList.toggle("offline", !status.live);
  $("#mode").textContent = status.live ? "live" : `offline · ${status.source ?? "recording"}`;
  document.title = status.live ? "wstap · live" : `wstap · ${status.source ?? "recording"}`;
  const connections = await api("GET", "/api/connections");
  model.setConnections(connections.connections);
  await loadRecords(0);
  rebuildView();
  renderConnections();
  openStream();
  if (state.live) refreshHolds();
  // The page holds what the store holds, no more: forget what the server has dropped.
  setInterval(async () => {
    try {
      const now = await api("GET", "/api/status");
      if (now.first_seq > 1) table.dropFront(model.forgetThrough(now.first_seq - 1));
    } catch { /* the next tick tries again */ }
  }, 10000);
  state.ready = true;
  document.body.dataset.ready = "true";
}

// MARK: - Connections

function renderConnections() {
  const list = $("#connections");
  const items = [...model.connections.values()].sort((a, b) => a.conn - b.conn);
  list.replaceChildren(...items.map(summary => {
    const item = document.createElement("li");
    item.dataset.conn = String(summary.conn);
    item.className = `${summary.state}${state.conn === summary.conn ? " selected" : ""}`;
    const url = document.createElement("div");
    url.className = "url";
    url.textContent = `#${summary.conn} ${summary.url ?? summary.client ?? ""}`;
    url.title = summary.url ?? "";
    const sub = document.createElement("div");
    sub.className = "sub";
    const parts = [summary.state === "open" ? "open" : summary.end?.reason ?? "ended",
      `${summary.client_messages} → · ${summary.server_messages} ←`];
    if (summary.diagnostics) parts.push(`${summary.diagnostics} diagnostics`);
    sub.textContent = parts.join(" · ");
    item.append(url, sub);
    return item;
  }));
  $("#all-connections").hidden = state.conn === null;
  updateActions();
}

$("#connections").addEventListener("click", event => {
  const item = event.target.closest("li");
  if (!item) return;
  const conn = Number(item.dataset.conn);
  state.conn = state.conn === conn ? null : conn;
  rebuildView();
  renderConnections();
});
$("#all-connections").addEventListener("click", () => { state.conn = null; rebuildView(); renderConnections(); });

// The connection the actions apply to: the one narrowed to, else the selected record's.
function actionConnection() {
  if (state.conn !== null) return state.conn;
  return table.selectedRecord?.conn ?? null;
}

function updateActions() {
  const conn = actionConnection();
  const summary = conn === null ? null : model.connections.get(conn);
  const open = summary?.state === "open" && !summary.http;
  for (const id of ["#compose-button", "#close-button", "#abort-button"]) $(id).disabled = !open;
  // A replay needs the session's open record, not a live connection: ended ones replay too.
  $("#replay-button").disabled = !(summary && summary.url && !summary.http);
  const record = table.selectedRecord;
  const isData = record?.type === "message" && (record.opcode === 1 || record.opcode === 2);
  $("#resend-button").disabled = !(open && isData && !record.truncated);
  $("#rule-button").disabled = !isData;
  const query = new URLSearchParams();
  if (conn !== null && state.conn !== null) query.set("conn", String(conn));
  if (state.filterText) query.set("filter", state.filterText);
  for (const format of ["jsonl", "har"]) {
    query.set("format", format);
    $(`#export-${format}`).href = `/api/export?${query}`;
    $(`#export-${format}`).download = `wstap${state.conn !== null ? `-conn${state.conn}` : ""}.${format}`;
  }
}

// MARK: - Detail

function showDetail(record) {
  const pane = $("#detail"), tabs = $("#tabs");
  if (!record) { pane.replaceChildren(); tabs.replaceChildren(); $("#detail-title").textContent = "Select a message"; updateActions(); return; }
  const url = model.connections.get(record.conn)?.url ?? "";
  const views = viewsFor(record, url);
  const current = preferredView(views, state.lastTab);
  const title = record.type === "message"
    ? `#${record.seq} · conn ${record.conn} · ${record.from === "client" ? "client → server" : "server → client"} · ${record.length} bytes`
    : `#${record.seq} · conn ${record.conn} · ${record.type}`;
  $("#detail-title").textContent = title;
  tabs.replaceChildren(...views.map(([name, draw]) => {
    const button = document.createElement("button");
    button.type = "button";
    button.role = "tab";
    button.textContent = name;
    button.dataset.view = name;
    button.setAttribute("aria-selected", String(name === current));
    button.addEventListener("click", () => { state.lastTab = name; showDetail(record); });
    return button;
  }));
  const draw = views.find(v => v[0] === current)[1];
  pane.replaceChildren(draw());
  pane.dataset.view = current;
  updateActions();
}

function switchTab(step) {
  const buttons = [...$("#tabs").children];
  const index = buttons.findIndex(b => b.getAttribute("aria-selected") === "true");
  const next = buttons[(index + step + buttons.length) % buttons.length];
  if (next) next.click();
}

// MARK: - Filter

$("#filter-form").addEventListener("submit", event => { event.preventDefault(); applyFilter($("#filter").value); });
$("#filter").addEventListener("input", () => { if ($("#filter").value === "" && state.filterText) applyFilter(""); });

function showFilterError(message, column) {
  $("#filter").classList.add("invalid");
  const box = $("#filter-error");
  box.hidden = false;
  // A caret under the column the server named (1-based), with the reason beside it.
  $("#filter-caret").textContent = column ? `${" ".repeat(Math.max(0, column - 1))}^` : "";
  $("#filter-message").textContent = column ? `\n${message}` : message;
}

function clearFilterError() {
  $("#filter").classList.remove("invalid");
  $("#filter-error").hidden = true;
}

async function applyFilter(text) {
  state.filterStream?.close();
  state.filterStream = null;
  clearFilterError();
  state.filterText = text.trim();
  if (!state.filterText) { state.matches = null; rebuildView(); updateActions(); return; }
  const encoded = encodeURIComponent(state.filterText);
  const matches = new Set();
  let after = 0, more = true;
  try {
    while (more) {
      const page = await api("GET", `/api/records?after=${after}&limit=10000&filter=${encoded}`);
      for (const record of page.records) matches.add(record.seq);
      after = page.next_after;
      more = page.more;
    }
  } catch (error) {
    state.matches = null;
    showFilterError(error.message, error.body?.column);
    rebuildView();
    return;
  }
  state.matches = matches;
  rebuildView();
  updateActions();
  // What matches from now on; the main stream brings the records themselves, in whichever order.
  const filterStream = new EventSource(`/api/events?after=${after}&filter=${encoded}`);
  filterStream.addEventListener("record", event => {
    const seq = JSON.parse(event.data).seq;
    if (matches.has(seq)) return;
    matches.add(seq);
    // Already here from the main stream, which skipped it as not (yet) matching: show it now.
    const record = model.bySeq.get(seq);
    if (record && model.rows[model.rows.length - 1]?.seq >= seq && isRow(record) && visible(record)) table.append(record);
  });
  state.filterStream = filterStream;
}

// MARK: - Pause, columns

function setPaused(paused) {
  table.setPaused(paused);
  $("#pause").textContent = paused ? "Resume" : "Pause";
  $("#pause").setAttribute("aria-pressed", String(paused));
  updateCounts();
}
$("#pause").addEventListener("click", () => setPaused(!table.paused));
$("#resume").addEventListener("click", () => setPaused(false));
document.querySelectorAll("#columns-menu input").forEach(box => {
  table.setColumn(box.dataset.column, box.checked);
  box.addEventListener("change", () => table.setColumn(box.dataset.column, box.checked));
});

// MARK: - Holds

let holdsRefresh = null;
function refreshHolds() {
  if (!state.live || holdsRefresh) return;
  holdsRefresh = (async () => {
    try { state.holds = (await api("GET", "/api/holds")).holds; } catch { state.holds = []; }
    holdsRefresh = null;
    renderHolds();
  })();
}

function renderHolds() {
  $("#holds-count").textContent = String(state.holds.length);
  $("#holds").replaceChildren(...state.holds.map(hold => {
    const item = document.createElement("li");
    item.dataset.conn = String(hold.conn);
    item.dataset.hold = String(hold.id);
    const head = document.createElement("div");
    head.textContent = `#${hold.conn} · hold ${hold.id} · from ${hold.from} · ${hold.length} B${hold.decided ? " · decided" : ""}`;
    const preview = document.createElement("div");
    preview.className = "preview";
    preview.textContent = hold.text ?? (hold.base64 ? bytesToHex(payloadBytes(hold).subarray(0, 24)) : "");
    item.append(head, preview);
    if (!hold.decided) {
      for (const action of ["forward", "drop", "edit"]) {
        const button = document.createElement("button");
        button.type = "button";
        button.textContent = action;
        button.dataset.action = action;
        button.addEventListener("click", () => action === "edit" ? editHold(hold) : releaseHold(hold, { action }));
        item.append(button);
      }
    }
    return item;
  }));
}

async function releaseHold(hold, body) {
  try {
    const answer = await api("POST", `/api/connections/${hold.conn}/holds/${hold.id}`, body);
    toast(`hold ${hold.id}: ${answer.result}`);
  } catch (error) {
    toast(`hold ${hold.id}: ${error.message}`, true);
  }
  refreshHolds();
}

function editHold(hold) {
  const dialog = $("#edit-dialog"), form = dialog.querySelector("form");
  const binary = hold.text === undefined;
  dialog.querySelector(".hold-name").textContent = `${hold.id} (connection ${hold.conn}, from ${hold.from})`;
  dialog.querySelector(".hint").textContent = binary ? "Binary: edit the bytes as hex." : "Text: what you write is sent as UTF-8.";
  form.payload.value = binary ? bytesToHex(payloadBytes(hold)) : hold.text;
  runDialog(dialog, async () => {
    let body;
    if (binary) {
      const bytes = hexToBytes(form.payload.value);
      if (!bytes) throw new Error("not hex: write bytes as pairs of hex digits (de ad be ef)");
      body = { action: "edit", base64: bytesToBase64(bytes) };
    } else body = { action: "edit", text: form.payload.value };
    await releaseHold(hold, body);
  });
}

// MARK: - Dialogs and actions

// Shows a dialog; `submit` runs on its primary button, and an error it throws stays in the dialog.
function runDialog(dialog, submit, extra = {}) {
  const error = dialog.querySelector(".dialog-error");
  error.hidden = true;
  const form = dialog.querySelector("form");
  form.onsubmit = async event => {
    if (event.submitter?.value === "cancel") return;
    event.preventDefault();
    try {
      await submit(event.submitter?.value);
      dialog.close();
    } catch (failure) {
      error.textContent = failure.message;
      error.hidden = false;
    }
  };
  for (const [selector, handler] of Object.entries(extra)) dialog.querySelector(selector).onclick = handler;
  dialog.showModal();
}

function compose(prefill) {
  const conn = actionConnection();
  if (conn === null) return;
  const dialog = $("#compose-dialog"), form = dialog.querySelector("form");
  dialog.querySelector(".conn-number").textContent = String(conn);
  if (prefill) {
    form.to.value = prefill.from === "client" ? "server" : "client";
    const binary = prefill.opcode === 2 || typeof prefill.text !== "string";
    form.type.value = binary ? "binary" : "text";
    form.payload.value = binary ? bytesToHex(payloadBytes(prefill) ?? new Uint8Array()) : prefill.text;
    form.fragments.value = String(prefill.frames ?? 1);
    form.compressed.checked = Boolean(prefill.compressed);
  }
  runDialog(dialog, async () => {
    const body = { to: form.to.value, fragments: Number(form.fragments.value) || 1, compressed: form.compressed.checked };
    if (form.type.value === "binary") {
      const bytes = hexToBytes(form.payload.value);
      if (!bytes) throw new Error("not hex: write bytes as pairs of hex digits (de ad be ef)");
      body.base64 = bytesToBase64(bytes);
    } else body.text = form.payload.value;
    const answer = await api("POST", `/api/connections/${conn}/messages`, body);
    toast(answer.result);
  });
  form.payload.focus();
}

$("#compose-button").addEventListener("click", () => compose(null));
$("#resend-button").addEventListener("click", () => compose(table.selectedRecord));

$("#close-button").addEventListener("click", () => {
  const conn = actionConnection();
  if (conn === null) return;
  const dialog = $("#close-dialog"), form = dialog.querySelector("form");
  dialog.querySelector(".conn-number").textContent = String(conn);
  form.preset.onchange = () => { form.code.value = form.preset.value; };
  runDialog(dialog, async () => {
    const answer = await api("POST", `/api/connections/${conn}/close`, { code: Number(form.code.value), reason: form.reason.value, to: form.to.value });
    toast(answer.result);
  });
});

$("#abort-button").addEventListener("click", async () => {
  const conn = actionConnection();
  if (conn === null || !confirm(`Reset both TCP connections of #${conn}, without a close handshake?`)) return;
  try { toast((await api("POST", `/api/connections/${conn}/abort`)).result); } catch (error) { toast(error.message, true); }
});

$("#replay-button").addEventListener("click", () => {
  const conn = actionConnection();
  if (conn === null) return;
  const dialog = $("#replay-dialog"), form = dialog.querySelector("form"), report = dialog.querySelector(".replay-report");
  dialog.querySelector(".conn-number").textContent = String(conn);
  form.to.value = model.connections.get(conn)?.url ?? "";
  report.hidden = true;
  // The dialog stays open on the result, which can be long; Close dismisses it.
  form.onsubmit = async event => {
    if (event.submitter?.value === "cancel") return;
    event.preventDefault();
    const error = dialog.querySelector(".dialog-error");
    error.hidden = true;
    report.hidden = false;
    report.textContent = "replaying…";
    delete report.dataset.same;
    try {
      const body = { conn, to: form.to.value.trim() || null, pace: form.pace.value, ignore: form.ignore.value.split(/\s+/).filter(Boolean) };
      const result = await api("POST", "/api/replays", body);
      const lines = [
        result.failure ? `failed: ${result.failure}` : `replayed as connection ${result.conn} to ${result.target}: sent ${result.sent} of ${result.client_messages} client messages, received ${result.received} (${result.recorded_replies} recorded)`,
        ...result.handshake.map(l => `handshake: ${l}`), ...result.timeouts.map(l => `timeout: ${l}`), ...result.notes.map(l => `note: ${l}`),
        ...result.differences.map(l => `diff: ${l}`),
        result.failure ? "" : result.same ? "the server answered as recorded" : `${result.differences.length} difference(s) from the recording`,
      ];
      report.textContent = lines.filter(Boolean).join("\n");
      report.dataset.same = String(result.same);
    } catch (failure) {
      report.hidden = true;
      error.textContent = failure.message;
      error.hidden = false;
    }
  };
  dialog.showModal();
});

async function openRules(extraLine) {
  const dialog = $("#rules-dialog"), form = dialog.querySelector("form"), report = dialog.querySelector(".rules-report");
  let current = "";
  try { current = (await api("GET", "/api/rules")).rules.map(r => r.text).join("\n"); } catch (error) { toast(error.message, true); return; }
  form.rules.value = extraLine ? (current ? `${current}\n${extraLine}` : extraLine) : current;
  report.hidden = true;
  runDialog(dialog, async () => {
    const answer = await api("PUT", "/api/rules", form.rules.value, "text/plain");
    toast(`${answer.rules.length} rule(s) in force`);
  }, {
    ".test": async () => {
      try {
        const answer = await api("POST", "/api/rules/test", form.rules.value, "text/plain");
        report.textContent = [`${answer.messages} messages tried`, ...answer.rules.map(r => `${r.name}: matched ${r.matched}, changed ${r.changed}`)].join("\n");
      } catch (error) { report.textContent = error.message; }
      report.hidden = false;
    },
  });
}

$("#rules-button").addEventListener("click", () => openRules(null));
$("#rule-button").addEventListener("click", () => {
  const record = table.selectedRecord;
  if (record) openRules(ruleFor(record));
});

// A rule that selects messages like this one: the same sender and type, and the JSON `type`-like
// member when there is one, else the first words of the text. `hold` is a safe action to start from.
function ruleFor(record) {
  const quote = text => `"${text.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n").replace(/\t/g, "\\t")}"`;
  const parts = [`from=${record.from}`, `op=${record.opcode === 1 ? "text" : "binary"}`];
  let json;
  if (typeof record.text === "string") { try { json = JSON.parse(record.text); } catch { json = undefined; } }
  if (json && typeof json === "object" && !Array.isArray(json)) {
    const key = ["type", "op", "event", "action", "method", "cmd", "kind"].find(k => typeof json[k] === "string" || typeof json[k] === "number")
      ?? Object.keys(json).find(k => /^[A-Za-z_][A-Za-z0-9_]*$/.test(k) && (typeof json[k] === "string" || typeof json[k] === "number"));
    if (key) parts.push(`json.${key}=${typeof json[key] === "string" ? quote(json[key]) : json[key]}`);
  } else if (typeof record.text === "string" && record.text.length) {
    parts.push(`text:${quote(record.text.slice(0, 40))}`);
  } else {
    const bytes = payloadBytes(record);
    if (bytes?.length) parts.push(`bytes:${bytesToHex(bytes.subarray(0, 8), "")}`);
  }
  return `[from-ui-${record.seq}] ${parts.join(" ")} => hold`;
}

// MARK: - Keyboard

document.addEventListener("keydown", event => {
  const target = event.target;
  if (document.querySelector("dialog[open]")) return;
  if (target.matches("input, textarea, select")) {
    if (event.key === "Escape") { target.blur(); $("#table").focus(); }
    return;
  }
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const page = Math.max(1, Math.floor($("#table").clientHeight / table.rowHeight) - 1);
  const move = step => { table.select((table.selected < 0 ? table.view.length : table.selected) + step, { reveal: true }); table.stick = false; };
  switch (event.key) {
    case "j": case "ArrowDown": move(1); break;
    case "k": case "ArrowUp": move(-1); break;
    case "PageDown": move(page); break;
    case "PageUp": move(-page); break;
    case "Home": case "g": table.select(0, { reveal: true }); table.stick = false; break;
    case "End": case "G": table.toBottom(); if (table.view.length) table.select(table.view.length - 1); break;
    case "/": $("#filter").focus(); break;
    case "p": setPaused(!table.paused); break;
    case "c": if (state.live && !$("#compose-button").disabled) compose(null); break;
    case "]": case "l": switchTab(1); break;
    case "[": case "h": switchTab(-1); break;
    default: return;
  }
  event.preventDefault();
});

// For tests and the benchmark: what the page holds, read from outside.
window.wstap = { model, table, state };

boot().catch(error => {
  toast(`cannot load: ${error.message}`, true);
  document.body.dataset.ready = "error";
});
