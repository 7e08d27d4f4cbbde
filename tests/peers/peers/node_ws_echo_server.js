// Echo server on Node `ws` (Debian node-ws). Args: [--deflate]. Prints 'ready PORT'.
const { WebSocketServer } = require('ws');
const deflate = process.argv.includes('--deflate');
const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: deflate });
wss.on('listening', () => console.log(`ready ${wss.address().port}`));
wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
});
