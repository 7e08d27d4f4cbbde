// What the page knows: every record the server sent, in seq order, with each message's frame and
// change records attached to it, and the rows the table shows. No DOM here.

const ROW_TYPES = new Set(["open", "http", "message", "diagnostic", "gap", "end"]);
// Pending frames per direction are kept only this long: a message takes its frames when it ends,
// so more than this waiting means the store dropped the message they belong to.
const PENDING_FRAMES_LIMIT = 4096;

export class Model {
  constructor() {
    this.rows = [];              // row-worthy records, in seq order
    this.bySeq = new Map();
    this.connections = new Map(); // conn -> summary (from /api/connections, updated by records)
    this.lastSeq = 0;
    this.pendingFrames = new Map(); // "conn/from" -> frame records not yet claimed by a message
    this.messageAt = new Map();     // "conn/from/offset" -> message record (for change records)
    this.pendingChanges = new Map(); // change records that came before their message
  }

  // Adds one record (from a page of /api/records or the push stream); returns it when it is a row.
  add(record) {
    if (record.seq <= this.lastSeq && this.bySeq.has(record.seq)) return null;
    this.lastSeq = Math.max(this.lastSeq, record.seq);
    this.bySeq.set(record.seq, record);
    this.track(record);
    switch (record.type) {
      case "frame": {
        const key = `${record.conn}/${record.from}`;
        let list = this.pendingFrames.get(key);
        if (!list) this.pendingFrames.set(key, list = []);
        list.push(record);
        if (list.length > PENDING_FRAMES_LIMIT) list.splice(0, list.length - PENDING_FRAMES_LIMIT);
        return null;
      }
      case "message": {
        record.frameRecords = this.claimFrames(record);
        const key = `${record.conn}/${record.from}/${record.offset}`;
        this.messageAt.set(key, record);
        const early = this.pendingChanges.get(key);
        if (early) { record.change = early; this.pendingChanges.delete(key); }
        break;
      }
      case "change": {
        if (record.result === "injected") break; // wstap's own message: a row of its own
        const key = `${record.conn}/${record.from}/${record.offset}`;
        const message = this.messageAt.get(key);
        if (message) message.change = record; else this.pendingChanges.set(key, record);
        return null;
      }
    }
    if (!isRow(record)) return null;
    this.rows.push(record);
    return record;
  }

  // A control message takes the frame at its own offset; a data message takes the data frames
  // from its offset on (control frames between its fragments are their own messages).
  claimFrames(message) {
    const list = this.pendingFrames.get(`${message.conn}/${message.from}`);
    if (!list || list.length === 0) return [];
    if (message.opcode >= 8) {
      const index = list.findIndex(f => f.offset === message.offset);
      return index < 0 ? [] : list.splice(index, 1);
    }
    const taken = [], kept = [];
    for (const frame of list) {
      if (frame.opcode < 8 && frame.offset >= message.offset) taken.push(frame);
      else if (frame.offset >= message.offset || frame.opcode >= 8) kept.push(frame);
    }
    list.length = 0;
    list.push(...kept);
    return taken;
  }

  // Keeps the connection list current from the records themselves, so the page needs no polling.
  track(record) {
    let summary = this.connections.get(record.conn);
    if (!summary) {
      summary = { conn: record.conn, state: "open", url: null, client: "", server: "", client_messages: 0, server_messages: 0, diagnostics: 0, end: null };
      this.connections.set(record.conn, summary);
    }
    switch (record.type) {
      case "open":
      case "http":
        summary.url = record.url; summary.client = record.client; summary.server = record.server;
        if (record.type === "http") summary.http = true;
        break;
      case "message":
        if (record.from === "client") summary.client_messages++; else summary.server_messages++;
        break;
      case "diagnostic":
        summary.diagnostics++;
        break;
      case "end":
        summary.state = "ended";
        summary.end = { reason: record.reason, closed_by: record.closed_by };
        break;
    }
    summary.last_seq = record.seq;
  }

  // Summaries from the server are the truth for what came before the page loaded.
  setConnections(list) {
    for (const summary of list) this.connections.set(summary.conn, { ...summary });
  }

  // Forgets what the server no longer holds, so a long session does not grow the page without end.
  forgetThrough(seq) {
    let cut = 0;
    while (cut < this.rows.length && this.rows[cut].seq <= seq) cut++;
    if (cut > 0) this.rows.splice(0, cut);
    for (const key of this.bySeq.keys()) {
      if (key > seq) break;
      const record = this.bySeq.get(key);
      this.bySeq.delete(key);
      if (record.type === "message") this.messageAt.delete(`${record.conn}/${record.from}/${record.offset}`);
    }
    return cut;
  }
}

// Whether the table has a row for the record: frames and rule changes belong to their message.
export function isRow(record) {
  return ROW_TYPES.has(record.type) || (record.type === "change" && record.result === "injected");
}

// The payload of a message record as bytes (text as UTF-8), or null when it has none.
export function payloadBytes(record) {
  if (typeof record.text === "string") return new TextEncoder().encode(record.text);
  if (typeof record.base64 === "string") return base64ToBytes(record.base64);
  return null;
}

export function base64ToBytes(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

export function bytesToBase64(bytes) {
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}

export function bytesToHex(bytes, separator = " ") {
  return Array.from(bytes, b => b.toString(16).padStart(2, "0")).join(separator);
}

// "de ad be ef" or "deadbeef" to bytes; null when it is not whole hex bytes.
export function hexToBytes(text) {
  const digits = text.replace(/\s+/g, "");
  if (digits.length % 2 !== 0 || /[^0-9a-fA-F]/.test(digits)) return null;
  const bytes = new Uint8Array(digits.length / 2);
  for (let i = 0; i < bytes.length; i++) bytes[i] = parseInt(digits.substr(i * 2, 2), 16);
  return bytes;
}

export const OPCODES = { 0: "cont", 1: "text", 2: "binary", 8: "close", 9: "ping", 10: "pong" };
export function opcodeName(opcode) { return OPCODES[opcode] ?? `op ${opcode}`; }
