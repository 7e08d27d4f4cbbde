// The message table: only the rows in view exist in the DOM (plus a margin), so the cost of a
// frame does not grow with the session. Rows have one fixed height; a spacer gives the scrollbar
// the whole length. New rows are drawn once per animation frame, however many arrived.

import { opcodeName } from "./model.js";

const OVERSCAN = 8;

export const COLUMNS = [
  { id: "seq", title: "#", width: "64px", className: "num" },
  { id: "time", title: "time", width: "106px" },
  { id: "conn", title: "conn", width: "48px", className: "num" },
  { id: "dir", title: "dir", width: "34px" },
  { id: "op", title: "opcode", width: "78px" },
  { id: "size", title: "size", width: "70px", className: "num" },
  { id: "wire", title: "wire", width: "70px", className: "num" },
  { id: "frames", title: "frames", width: "68px", className: "num" },
  { id: "z", title: "deflate", width: "64px" },
  { id: "fin", title: "FIN", width: "52px", optional: true },
  { id: "rsv", title: "RSV", width: "44px", optional: true },
  { id: "mask", title: "mask", width: "80px", optional: true },
  { id: "preview", title: "preview", width: "minmax(120px, 1fr)", className: "preview" },
  { id: "marks", title: "rules", width: "130px", className: "marks" },
];

export class VirtualTable {
  constructor({ scroller, spacer, body, head, onSelect, onNewWhilePaused }) {
    this.scroller = scroller; this.spacer = spacer; this.body = body; this.head = head;
    this.onSelect = onSelect; this.onNewWhilePaused = onNewWhilePaused;
    this.view = [];          // the records shown, in order
    this.waiting = [];       // rows that came while paused
    this.paused = false;
    this.stick = true;       // follow new rows while the user has not scrolled up
    this.selected = -1;
    this.pool = [];
    this.visible = new Set(["seq", "time", "conn", "dir", "op", "size", "wire", "frames", "z", "preview", "marks"]);
    this.rowHeight = 22;
    this.scheduled = false;
    scroller.addEventListener("scroll", () => {
      const bottom = scroller.scrollTop + scroller.clientHeight >= scroller.scrollHeight - this.rowHeight * 1.5;
      this.stick = bottom;
      this.schedule();
    });
    body.addEventListener("click", event => {
      const row = event.target.closest(".row");
      if (row && row.dataset.index) this.select(Number(row.dataset.index));
    });
    new ResizeObserver(() => this.schedule()).observe(scroller);
    this.layoutColumns();
  }

  setColumn(id, on) {
    if (on) this.visible.add(id); else this.visible.delete(id);
    this.pool.forEach(row => row.remove());
    this.pool = [];
    this.layoutColumns();
    this.schedule();
  }

  layoutColumns() {
    const shown = COLUMNS.filter(c => this.visible.has(c.id));
    document.documentElement.style.setProperty("--columns", shown.map(c => c.width).join(" "));
    this.head.replaceChildren(...shown.map(c => {
      const cell = document.createElement("span");
      cell.textContent = c.title;
      if (c.className === "num") cell.className = "num";
      return cell;
    }));
    this.shown = shown;
  }

  // Replaces everything shown (a new filter or connection); keeps the selection when it is still there.
  setRows(rows) {
    const selectedSeq = this.selectedRecord?.seq;
    this.view = rows;
    this.waiting = [];
    this.selected = selectedSeq === undefined ? -1 : this.indexOfSeq(selectedSeq);
    this.onNewWhilePaused(0);
    this.schedule();
  }

  append(record) {
    if (this.paused) {
      this.waiting.push(record);
      this.onNewWhilePaused(this.waiting.length);
      return;
    }
    this.view.push(record);
    this.schedule();
  }

  // Rows the server no longer holds leave the front.
  dropFront(count) {
    if (count <= 0) return;
    this.view.splice(0, count);
    if (this.selected >= 0) this.selected = this.selected - count;
    if (this.selected < 0) this.selected = -1;
    this.scroller.scrollTop = Math.max(0, this.scroller.scrollTop - count * this.rowHeight);
    this.schedule();
  }

  setPaused(paused) {
    this.paused = paused;
    if (!paused && this.waiting.length) {
      for (const record of this.waiting) this.view.push(record);
      this.waiting = [];
      this.onNewWhilePaused(0);
      this.stick = true;
    }
    this.schedule();
  }

  get selectedRecord() { return this.selected >= 0 ? this.view[this.selected] : undefined; }

  indexOfSeq(seq) {
    let low = 0, high = this.view.length - 1;
    while (low <= high) {
      const mid = (low + high) >> 1, value = this.view[mid].seq;
      if (value === seq) return mid;
      if (value < seq) low = mid + 1; else high = mid - 1;
    }
    return -1;
  }

  select(index, { reveal = false } = {}) {
    if (this.view.length === 0) return;
    this.selected = Math.max(0, Math.min(this.view.length - 1, index));
    if (reveal) {
      const top = this.selected * this.rowHeight, height = this.scroller.clientHeight;
      if (top < this.scroller.scrollTop) this.scroller.scrollTop = top;
      else if (top + this.rowHeight > this.scroller.scrollTop + height) this.scroller.scrollTop = top + this.rowHeight - height;
    }
    this.schedule();
    this.onSelect(this.view[this.selected]);
  }

  toBottom() {
    this.stick = true;
    this.scroller.scrollTop = this.scroller.scrollHeight;
    this.schedule();
  }

  schedule() {
    if (this.scheduled) return;
    this.scheduled = true;
    requestAnimationFrame(() => { this.scheduled = false; this.render(); });
  }

  render() {
    const total = this.view.length;
    this.spacer.style.height = `${total * this.rowHeight}px`;
    if (this.stick && !this.paused) this.scroller.scrollTop = this.scroller.scrollHeight;
    const top = this.scroller.scrollTop, height = this.scroller.clientHeight;
    const first = Math.max(0, Math.floor(top / this.rowHeight) - OVERSCAN);
    const last = Math.min(total, Math.ceil((top + height) / this.rowHeight) + OVERSCAN);
    const count = Math.max(0, last - first);
    while (this.pool.length < count) {
      const row = document.createElement("div");
      for (const column of this.shown) {
        const cell = document.createElement("span");
        if (column.className) cell.className = column.className;
        if (column.id === "dir" || column.id === "op") cell.classList.add(column.id);
        row.appendChild(cell);
      }
      this.body.appendChild(row);
      this.pool.push(row);
    }
    this.body.style.transform = `translateY(${first * this.rowHeight}px)`;
    for (let k = 0; k < this.pool.length; k++) {
      const row = this.pool[k];
      if (k >= count) { row.hidden = true; continue; }
      row.hidden = false;
      const index = first + k, record = this.view[index];
      if (row.dataset.seq !== String(record.seq) || row.dataset.version !== String(record.change ? 1 : 0)) {
        this.fill(row, record);
        row.dataset.seq = String(record.seq);
        row.dataset.version = String(record.change ? 1 : 0);
      }
      row.dataset.index = String(index);
      row.classList.toggle("selected", index === this.selected);
    }
  }

  fill(row, record) {
    const cells = describe(record);
    let className = `row kind-${record.type}`;
    if (record.from) className += ` from-${record.from}`;
    if (record.severity) className += ` sev-${record.severity}`;
    if (record.type === "message" && record.opcode >= 8) className += " control";
    row.className = className;
    for (let i = 0; i < this.shown.length; i++) row.children[i].textContent = cells[this.shown[i].id] ?? "";
  }
}

// The text of each cell for a record.
export function describe(record) {
  const time = new Date(record.ts * 1000);
  const cells = {
    seq: String(record.seq),
    time: `${time.toTimeString().slice(0, 8)}.${String(time.getMilliseconds()).padStart(3, "0")}`,
    conn: String(record.conn),
    dir: record.from === "client" ? "→" : record.from === "server" ? "←" : "",
  };
  switch (record.type) {
    case "message": {
      cells.op = opcodeName(record.opcode);
      cells.size = String(record.length);
      cells.wire = String(record.wire_length);
      cells.frames = String(record.frames);
      cells.z = record.compressed ? "yes" : "";
      cells.preview = preview(record);
      const frames = record.frameRecords ?? [];
      if (frames.length) {
        cells.fin = frames.map(f => (f.fin ? "1" : "0")).join("").slice(0, 8);
        const f = frames[0];
        cells.rsv = `${f.rsv1 ? 1 : 0}${f.rsv2 ? 1 : 0}${f.rsv3 ? 1 : 0}`;
        cells.mask = f.masked ? f.mask_key ?? "yes" : "none";
      }
      const change = record.change;
      if (change) cells.marks = [change.result, ...(change.marks ?? []), ...(change.rules ?? [])].join(" · ");
      break;
    }
    case "change":
      cells.op = "injected";
      cells.preview = (change => {
        const sent = change.sent?.[0];
        if (!sent) return change.notes?.join("; ") ?? "";
        return sent.text !== undefined ? oneLine(sent.text) : `${sent.length} bytes`;
      })(record);
      cells.marks = (record.rules ?? []).join(" · ");
      break;
    case "diagnostic":
      cells.op = record.code;
      cells.preview = `${record.severity}: ${record.detail}`;
      break;
    case "open":
      cells.op = "open";
      cells.preview = `${record.url}${record.subprotocol ? `  protocol ${record.subprotocol}` : ""}${record.extensions ? `  ${record.extensions}` : ""}`;
      break;
    case "http":
      cells.op = "http";
      cells.preview = `${record.request?.method ?? ""} ${record.url ?? ""} → ${record.response?.status ?? ""}`;
      break;
    case "gap":
      cells.op = "gap";
      cells.preview = `${record.bytes} bytes missing from the capture`;
      break;
    case "end":
      cells.op = "end";
      cells.preview = record.reason;
      break;
  }
  return cells;
}

function oneLine(text) {
  const cut = text.length > 300 ? text.slice(0, 300) : text;
  return cut.replace(/[\r\n\t]+/g, " ");
}

function preview(record) {
  if (record.opcode === 8) return `close ${record.code ?? "(no code)"}${record.reason ? ` ${record.reason}` : ""}`;
  if (typeof record.text === "string") return oneLine(record.text) + (record.truncated ? " …" : "");
  if (typeof record.base64 === "string") {
    const binary = atob(record.base64.slice(0, 64));
    let hex = "";
    for (let i = 0; i < Math.min(binary.length, 24); i++) hex += binary.charCodeAt(i).toString(16).padStart(2, "0") + " ";
    return hex + (record.length > 24 ? "…" : "");
  }
  return record.inflate_failed ? "(could not inflate)" : "";
}
