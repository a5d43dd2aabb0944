// Idle event streams and sequential polls over plaintext HTTP/1.1 (fast paths on), HTTPS
// HTTP/1.1 and HTTPS HTTP/2: the server's RSS per idle SSE stream, and polls per second
// on one connection (client and server share the machine). Record: docs/design/https.md.
//
//   openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
//     -keyout /tmp/key.pem -out /tmp/cert.pem -days 2 -subj /CN=localhost \
//     -addext subjectAltName=IP:127.0.0.1,DNS:localhost
//   N=900 node bench/https-streams.mjs target/release/progress-hub /tmp/cert.pem /tmp/key.pem
//
// N streams need N open files in this process and in the server (ulimit -n).
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import http from 'node:http';
import https from 'node:https';
import http2 from 'node:http2';

const BIN = process.argv[2];
const CERT = process.argv[3];
const KEY = process.argv[4];
const N = Number(process.env.N || 1000);
const POLLS = Number(process.env.POLLS || 3000);
const ca = readFileSync(CERT);

async function start(tls) {
  const args = ['--listen', '127.0.0.1:0', '--store', 'memory', '--data-dir', `${tmpdir()}/progress-hub-bench-${tls}-${Date.now()}`,
    '--max-subscribers-per-task', '100000', '--max-subscribers', '100000'];
  if (tls) args.push('--tls-cert', CERT, '--tls-key', KEY);
  const child = spawn(BIN, args, { env: { RUST_LOG: 'warn' }, stdio: ['ignore', 'pipe', 'inherit'] });
  const addr = await new Promise((res) => createInterface({ input: child.stdout }).on('line', (l) => {
    const m = /^listening on https?:\/\/(\S+)$/.exec(l); if (m) res(m[1]);
  }));
  return { child, addr };
}
const rss = (pid) => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))[1]);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function post(mod, opts, path, body) {
  return new Promise((res, rej) => {
    const req = mod.request({ ...opts, path, method: 'POST', headers: { 'content-type': 'application/json' } }, (r) => { r.resume(); r.on('end', () => res(r.statusCode)); });
    req.on('error', rej); req.end(JSON.stringify(body));
  });
}

async function h1Streams(mod, opts, n) {
  const agent = new mod.Agent({ keepAlive: true, maxSockets: Infinity });
  const reqs = [];
  await Promise.all(Array.from({ length: n }, () => new Promise((res, rej) => {
    const req = mod.get({ ...opts, agent, path: '/api/index-progress/m/events' }, (r) => { r.once('data', () => res()); });
    req.on('error', rej); reqs.push(req);
  })));
  return () => { for (const r of reqs) r.destroy(); agent.destroy(); };
}

async function h2Streams(addr, n) {
  const sessions = [];
  const streams = [];
  const per = 128;
  for (let i = 0; i < n; i += per) {
    const session = http2.connect(`https://${addr}`, { ca });
    sessions.push(session);
    const batch = Math.min(per, n - i);
    await Promise.all(Array.from({ length: batch }, () => new Promise((res, rej) => {
      const s = session.request({ ':path': '/api/index-progress/m/events' });
      s.once('data', () => res()); s.on('error', rej); streams.push(s);
    })));
  }
  return () => { for (const s of sessions) s.destroy(); };
}

async function pollsH1(mod, opts) {
  const agent = new mod.Agent({ keepAlive: true, maxSockets: 1 });
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < POLLS; i++) {
    await new Promise((res, rej) => { const r = mod.get({ ...opts, agent, path: '/api/index-progress/m' }, (x) => { x.resume(); x.on('end', res); }); r.on('error', rej); });
  }
  agent.destroy();
  return POLLS / (Number(process.hrtime.bigint() - t0) / 1e9);
}
async function pollsH2(addr) {
  const session = http2.connect(`https://${addr}`, { ca });
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < POLLS; i++) {
    await new Promise((res, rej) => { const s = session.request({ ':path': '/api/index-progress/m' }); s.resume(); s.on('end', res); s.on('error', rej); s.end(); });
  }
  session.destroy();
  return POLLS / (Number(process.hrtime.bigint() - t0) / 1e9);
}

for (const mode of ['http1-plain', 'https-http1', 'https-h2']) {
  const tls = mode !== 'http1-plain';
  const { child, addr } = await start(tls);
  const [host, port] = addr.split(':');
  const mod = tls ? https : http;
  const opts = tls ? { host, port, ca, servername: 'localhost', ALPNProtocols: ['http/1.1'] } : { host, port };
  await post(mod, opts, '/api/tasks', { id: 'm', total: 10 });
  const polls = mode === 'https-h2' ? await pollsH2(addr) : await pollsH1(mod, opts);
  await sleep(500);
  const before = rss(child.pid);
  const close = mode === 'https-h2' ? await h2Streams(addr, N) : await h1Streams(mod, opts, N);
  await sleep(1000);
  const after = rss(child.pid);
  console.log(`${mode}: ${polls.toFixed(0)} polls/s sequential on one connection; ${N} idle SSE streams: RSS ${before} -> ${after} KiB, ${((after - before) * 1024 / N).toFixed(0)} B per stream`);
  close();
  child.kill('SIGTERM');
  await new Promise((r) => child.on('exit', r));
}
