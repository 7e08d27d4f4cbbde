// Client on Node `ws`: sends each argv message (text, then a binary copy), prints echoes as JSON lines.
const WebSocket = require('ws');
const [url, ...texts] = process.argv.slice(2);
const ws = new WebSocket(url, { perMessageDeflate: { threshold: 0 } });
const expected = texts.length * 2;
let received = 0;
ws.on('open', () => {
  for (const t of texts) {
    ws.send(t);
    ws.send(Buffer.from(t), { binary: true });
  }
});
ws.on('message', (data, isBinary) => {
  console.log(JSON.stringify({ binary: isBinary, data: data.toString() }));
  if (++received === expected) ws.close(1000, 'node done');
});
ws.on('close', (code) => { console.log(JSON.stringify({ closed: code })); process.exit(0); });
ws.on('error', (e) => { console.error(String(e)); process.exit(1); });
