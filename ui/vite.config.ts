import { defineConfig } from 'vite';
import react from '@vitejs/plugin-react';

// The bundle is served by jarvis-cloud from the same origin (`/`), and by the desktop shell.
// `npm run dev` proxies the API and the sync socket to a local `jarvis-cloud serve`.
const target = process.env.JARVIS_HUB ?? 'http://127.0.0.1:8080';

export default defineConfig({
  plugins: [react()],
  base: '/',
  build: {
    target: 'es2022',
    sourcemap: false,
    // Syntax highlighting is loaded on first use of a code preview, not at start.
    chunkSizeWarningLimit: 600,
  },
  server: {
    proxy: {
      '/api': target,
      '/blobs': target,
      '/openapi.json': target,
      '/sync': { target: target.replace(/^http/, 'ws'), ws: true },
    },
  },
});
