// The Node Hocuspocus server, as the yardstick for our hub: same protocol, in-memory documents
// (no persistence extension). `node hocuspocus-server.mjs --port 0 --token T` prints
// `listening on 127.0.0.1:<port>` once it accepts connections.
import { Server } from '@hocuspocus/server';

const args = process.argv.slice(2);
const arg = (name, fallback) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && i + 1 < args.length ? args[i + 1] : fallback;
};
const token = arg('token', '');
const server = new Server({
  port: Number(arg('port', '0')),
  address: '127.0.0.1',
  quiet: true,
  // Hocuspocus' default debounce writes nothing anywhere without an extension; say so.
  async onAuthenticate(data) {
    if (token && data.token !== token) {
      throw new Error('unknown token');
    }
  },
});
await server.listen();
const address = server.httpServer.address();
console.log(`listening on 127.0.0.1:${address.port}`);
const stop = async () => {
  await server.destroy();
  process.exit(0);
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
