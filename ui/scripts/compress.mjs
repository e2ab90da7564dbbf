// Writes a .gz next to every compressible file of the build, so jarvis-cloud can send it to
// clients that accept gzip without compressing on each request.
import { readdirSync, readFileSync, writeFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { gzipSync, constants } from 'node:zlib';

const root = new URL('../dist/', import.meta.url).pathname;
const compressible = /\.(js|css|html|svg|json|txt|map)$/;
function walk(dir) {
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) walk(p);
    else if (compressible.test(name)) {
      writeFileSync(`${p}.gz`, gzipSync(readFileSync(p), { level: constants.Z_BEST_COMPRESSION }));
    }
  }
}
walk(root);
