// Writes a .br and a .gz next to every compressible file of the build, so jarvis-cloud (tower-http's
// ServeFile) can send whichever the client accepts without compressing on each request.
import { readdirSync, readFileSync, writeFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { brotliCompressSync, gzipSync, constants } from 'node:zlib';

const root = new URL('../dist/', import.meta.url).pathname;
const compressible = /\.(js|css|html|svg|json|txt|map)$/;
function walk(dir) {
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) walk(p);
    else if (compressible.test(name)) {
      const bytes = readFileSync(p);
      writeFileSync(`${p}.gz`, gzipSync(bytes, { level: constants.Z_BEST_COMPRESSION }));
      writeFileSync(
        `${p}.br`,
        brotliCompressSync(bytes, { params: { [constants.BROTLI_PARAM_QUALITY]: constants.BROTLI_MAX_QUALITY } }),
      );
    }
  }
}
walk(root);
