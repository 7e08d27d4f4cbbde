// The detail pane: one record in every view that fits it. Payloads are untrusted: they only ever
// reach the page as textContent, never as markup.

import { payloadBytes, base64ToBytes, bytesToBase64, opcodeName } from "./model.js";

const HEX_LIMIT = 64 * 1024;       // bytes shown in the hex view
const JSON_NODE_LIMIT = 5000;      // nodes drawn in the JSON tree

function element(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "className") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

// The views a record has, in tab order; each is a function that draws into the pane.
// Socket.IO is decoded only on connections that speak it (their URL says so): any text that starts
// with a digit would otherwise pass for an Engine.IO packet.
export function viewsFor(record, url = "") {
  const speaksSocketIO = /socket\.io|[?&]EIO=/.test(url ?? "");
  const views = [];
  if (record.type === "message" || record.type === "change") {
    const bytes = record.type === "message" ? payloadBytes(record) : sentBytes(record.sent?.[0]);
    const text = textOf(record.type === "message" ? record : record.sent?.[0]);
    const json = text !== null ? parseJSON(text) : undefined;
    const socketIO = text !== null && speaksSocketIO ? decodeSocketIO(text) : null;
    if (record.type === "message" && record.opcode === 8) views.push(["Close", () => closeView(record)]);
    if (text !== null) views.push(["Text", () => textView(record, text)]);
    if (json !== undefined) views.push(["JSON", () => jsonView(json)]);
    if (socketIO) views.push(["Socket.IO", () => socketIOView(socketIO)]);
    if (bytes) {
      views.push(["Hex", () => hexView(bytes, record)]);
      views.push(["Base64", () => element("pre", { text: bytesToBase64(bytes) })]);
    }
    if (record.type === "message") views.push(["Frames", () => framesView(record)]);
    if (record.change || record.type === "change") views.push(["Changed", () => changedView(record)]);
  }
  views.push(["Record", () => element("pre", { text: JSON.stringify(strip(record), null, 2) })]);
  return views;
}

// The tab to open first: what a person would look at.
export function preferredView(views, last) {
  const names = views.map(v => v[0]);
  if (last && names.includes(last)) return last;
  for (const name of ["Socket.IO", "JSON", "Text", "Close", "Hex"]) if (names.includes(name)) return name;
  return names[0];
}

function strip(record) {
  const { frameRecords, change, ...rest } = record;
  return rest;
}

function textOf(message) {
  if (!message) return null;
  if (typeof message.text === "string") return message.text;
  return null;
}

function sentBytes(sent) {
  if (!sent) return null;
  if (typeof sent.text === "string") return new TextEncoder().encode(sent.text);
  if (typeof sent.base64 === "string") return base64ToBytes(sent.base64);
  return null;
}

function parseJSON(text) {
  const start = text.trimStart()[0];
  if (start !== "{" && start !== "[") return undefined;
  try { return JSON.parse(text); } catch { return undefined; }
}

function truncationNote(record) {
  if (record.truncated) return element("p", { className: "note", text: `The recording kept the first bytes of ${record.length} (--max-payload).` });
  if (record.inflate_failed) return element("p", { className: "note", text: "This message could not be inflated: the bytes are as on the wire." });
  return null;
}

function textView(record, text) {
  return element("div", {}, truncationNote(record), element("pre", { text }));
}

function closeView(record) {
  const table = element("table");
  const row = (name, value) => table.append(element("tr", {}, element("th", { text: name }), element("td", { text: value })));
  row("code", record.code ?? "(none)");
  row("reason", record.reason ?? "(none)");
  return table;
}

export function jsonView(value) {
  const root = element("div", { className: "json" });
  let nodes = 0;
  const scalar = v => {
    if (v === null) return element("span", { className: "null", text: "null" });
    const type = typeof v;
    return element("span", { className: type === "string" ? "string" : type, text: JSON.stringify(v) });
  };
  const draw = (key, v, parent, open) => {
    if (++nodes > JSON_NODE_LIMIT) {
      if (nodes === JSON_NODE_LIMIT + 1) parent.append(element("div", { className: "leaf note", text: `… more than ${JSON_NODE_LIMIT} values: see Text` }));
      return;
    }
    const label = key === null ? null : element("span", { className: "key", text: `${key}: ` });
    if (v !== null && typeof v === "object") {
      const isArray = Array.isArray(v), entries = isArray ? v.map((x, i) => [i, x]) : Object.entries(v);
      const details = element("details");
      if (open) details.open = true;
      details.append(element("summary", {}, label, element("span", { className: "note", text: isArray ? `[${entries.length}]` : `{${entries.length}}` })));
      // Plain names as they are; a key with spaces or quotes in JSON's own quoting.
      for (const [k, x] of entries) draw(isArray || /^[A-Za-z_$][\w$-]*$/.test(k) ? k : JSON.stringify(k), x, details, false);
      parent.append(details);
    } else {
      parent.append(element("div", { className: "leaf" }, label, scalar(v)));
    }
  };
  draw(null, value, root, true);
  // The first two levels open: enough to read a typical message without clicking.
  root.querySelectorAll(":scope > details > details").forEach(d => { d.open = true; });
  return root;
}

export function hexView(bytes, record) {
  const shown = bytes.subarray(0, HEX_LIMIT);
  const lines = [];
  for (let offset = 0; offset < shown.length; offset += 16) {
    const chunk = shown.subarray(offset, offset + 16);
    let hex = "", ascii = "";
    for (let i = 0; i < 16; i++) {
      if (i < chunk.length) {
        hex += chunk[i].toString(16).padStart(2, "0") + " ";
        ascii += chunk[i] >= 0x20 && chunk[i] < 0x7f ? String.fromCharCode(chunk[i]) : ".";
      } else hex += "   ";
      if (i === 7) hex += " ";
    }
    lines.push(`${offset.toString(16).padStart(8, "0")}  ${hex} ${ascii}`);
  }
  const notes = [];
  if (bytes.length > HEX_LIMIT) notes.push(element("p", { className: "note", text: `Showing the first ${HEX_LIMIT} of ${bytes.length} bytes.` }));
  if (record) { const note = truncationNote(record); if (note) notes.push(note); }
  return element("div", {}, ...notes, element("div", { className: "hex", text: lines.join("\n") }));
}

function framesView(record) {
  const frames = record.frameRecords ?? [];
  if (frames.length === 0) return element("p", { className: "note", text: `${record.frames} frame(s); their headers are not in what the page holds (a HAR, or dropped from the store).` });
  const table = element("table");
  table.append(element("tr", {}, ...["offset", "FIN", "RSV1", "RSV2", "RSV3", "opcode", "mask", "length", "length bits", "header"].map(t => element("th", { text: t }))));
  for (const f of frames) {
    table.append(element("tr", {}, ...[f.offset, f.fin ? 1 : 0, f.rsv1 ? 1 : 0, f.rsv2 ? 1 : 0, f.rsv3 ? 1 : 0,
      `${f.opcode} ${opcodeName(f.opcode)}`, f.masked ? f.mask_key ?? "yes" : "none", f.length, f.length_bits, `${f.header_length} B`].map(v => element("td", { text: String(v) }))));
  }
  return table;
}

function describeSent(sent) {
  if (!sent) return element("p", { className: "note", text: "nothing left" });
  const text = typeof sent.text === "string" ? sent.text : null;
  const header = element("p", { className: "note", text: `${opcodeName(sent.opcode)}, ${sent.length} bytes, ${sent.frames} frame(s)${sent.compressed ? ", compressed" : ""}${sent.truncated ? ", cut at --max-payload" : ""}` });
  return element("div", {}, header, text !== null ? element("pre", { text }) : hexView(sentBytes(sent)));
}

function changedView(record) {
  const change = record.type === "change" ? record : record.change;
  const facts = element("table");
  const row = (name, value) => { if (value !== undefined && value !== null && value !== "") facts.append(element("tr", {}, element("th", { text: name }), element("td", { text: String(value) }))); };
  row("result", change.result);
  row("rules", (change.rules ?? []).join(", "));
  row("actions", (change.actions ?? []).join("; "));
  row("marks", (change.marks ?? []).join(", "));
  row("held", change.held_ms !== undefined ? `${change.held_ms} ms` : undefined);
  row("notes", (change.notes ?? []).join("; "));
  const received = record.type === "message"
    ? element("div", {}, element("h4", { text: "received" }), typeof record.text === "string" ? element("pre", { text: record.text }) : hexView(payloadBytes(record) ?? new Uint8Array(), record))
    : element("div", {}, element("h4", { text: "received" }), element("p", { className: "note", text: "wstap's own message" }));
  const sent = element("div", {}, element("h4", { text: `sent (${(change.sent ?? []).length})` }), ...((change.sent ?? []).length ? change.sent.map(describeSent) : [describeSent(null)]));
  return element("div", {}, facts, element("div", { className: "compare" }, received, sent));
}

// Engine.IO (v4) packet types and Socket.IO (v5) packet types, as their protocols number them.
const ENGINE_TYPES = ["open", "close", "ping", "pong", "message", "upgrade", "noop"];
const SOCKET_TYPES = ["CONNECT", "DISCONNECT", "EVENT", "ACK", "CONNECT_ERROR", "BINARY_EVENT", "BINARY_ACK"];

// An Engine.IO packet, with the Socket.IO packet inside a message; null for text that is not one.
export function decodeSocketIO(text) {
  if (text.length === 0 || text[0] < "0" || text[0] > "6") return null;
  const engine = ENGINE_TYPES[Number(text[0])];
  let rest = text.slice(1);
  const result = { engine };
  if (engine !== "message") {
    if (rest.length) { const json = parseJSON(rest); result.data = json !== undefined ? json : rest; }
    // "2probe" and "3probe" are the upgrade probes; a bare digit is a ping or pong of its own.
    if (rest && !isJSONOrProbe(rest)) return null;
    return result;
  }
  if (rest.length === 0 || rest[0] < "0" || rest[0] > "6") { result.data = rest; return result; }
  const type = Number(rest[0]);
  result.socket = SOCKET_TYPES[type];
  rest = rest.slice(1);
  if (type === 5 || type === 6) {
    const match = /^(\d+)-/.exec(rest);
    if (!match) return null;
    result.attachments = Number(match[1]);
    rest = rest.slice(match[0].length);
  }
  if (rest.startsWith("/")) {
    const comma = rest.indexOf(",");
    result.namespace = comma < 0 ? rest : rest.slice(0, comma);
    rest = comma < 0 ? "" : rest.slice(comma + 1);
  } else result.namespace = "/";
  const id = /^\d+/.exec(rest);
  if (id) { result.ack = Number(id[0]); rest = rest.slice(id[0].length); }
  if (rest.length) {
    const json = parseJSON(rest);
    if (json === undefined) return null;
    result.data = json;
    if ((type === 2 || type === 5) && Array.isArray(json) && typeof json[0] === "string") result.event = json[0];
  }
  return result;
}

function isJSONOrProbe(rest) {
  if (rest === "probe") return true;
  return parseJSON(rest) !== undefined;
}

function socketIOView(packet) {
  const table = element("table");
  const row = (name, value) => { if (value !== undefined) table.append(element("tr", {}, element("th", { text: name }), element("td", { text: String(value) }))); };
  row("Engine.IO", packet.engine);
  row("Socket.IO", packet.socket);
  row("namespace", packet.socket ? packet.namespace : undefined);
  row("event", packet.event);
  row("ack id", packet.ack);
  row("binary attachments", packet.attachments);
  const parts = [table];
  if (packet.data !== undefined) parts.push(typeof packet.data === "object" && packet.data !== null ? jsonView(packet.event ? packet.data.slice(1) : packet.data) : element("pre", { text: String(packet.data) }));
  return element("div", {}, ...parts);
}
