// Client on Node `ws`: sends each argv text message, waits for COUNT messages back, prints them as
// JSON lines, then closes with 1000. Usage: node node_ws_script_client.js URL COUNT TEXT...
const WebSocket = require('ws');
const [url, count, ...texts] = process.argv.slice(2);
const ws = new WebSocket(url, { perMessageDeflate: { threshold: 0 } });
let received = 0;
ws.on('open', () => { for (const t of texts) ws.send(t); });
ws.on('message', (data, isBinary) => {
  console.log(JSON.stringify({ binary: isBinary, data: data.toString() }));
  if (++received === Number(count)) ws.close(1000, 'node done');
});
ws.on('close', (code) => { console.log(JSON.stringify({ closed: code })); process.exit(0); });
ws.on('error', (e) => { console.error(String(e)); process.exit(1); });
