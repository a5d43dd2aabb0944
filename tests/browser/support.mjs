// Test support: the real progress-hub binary on a free loopback port, a producer client
// for its API, Chromium through playwright-core, and waits that always have a deadline.

import { execFile, spawn } from 'node:child_process';
import { request as httpsRequest } from 'node:https';
import { once } from 'node:events';
import { mkdtemp, mkdir, readFile, rm } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, '..', '..');
export const BINARY = process.env.PROGRESS_HUB_BIN || join(root, 'target', 'debug', 'progress-hub');
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
export const SCREENSHOTS = process.env.SCREENSHOT_DIR || join(root, 'target', 'browser-screenshots');

const START_TIMEOUT_MS = 15000;
const STOP_TIMEOUT_MS = 10000;
const REQUEST_TIMEOUT_MS = 10000;

export async function tempDir(prefix = 'progress-hub-browser-') {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  return { path: dir, remove: () => rm(dir, { recursive: true, force: true }) };
}

/** Starts the binary and resolves once it printed `listening on http://ADDR` (or
 *  `https://ADDR` when `tls` names a certificate from `selfSignedCertificate`). */
export async function startServer({ dataDir, listen = '127.0.0.1:0', indexRoots = [], extraArgs = [], tls = null }) {
  if (!existsSync(BINARY)) throw new Error(`server binary missing: ${BINARY} (run cargo build)`);
  const args = ['--listen', listen, '--data-dir', dataDir, ...extraArgs];
  if (tls) args.push('--tls-cert', tls.cert, '--tls-key', tls.key);
  for (const dir of indexRoots) args.push('--index-root', dir);
  // The tests decide every setting: none may leak in from the environment.
  const env = Object.fromEntries(
    Object.entries(process.env).filter(([key]) => !key.startsWith('PROGRESS_HUB_')),
  );
  env.RUST_LOG = env.RUST_LOG || 'info';
  const child = spawn(BINARY, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  const log = [];
  const remember = (line) => {
    log.push(line);
    if (log.length > 300) log.shift();
  };
  createInterface({ input: child.stderr }).on('line', remember);
  const lines = createInterface({ input: child.stdout });
  const exited = once(child, 'exit');

  const addr = await new Promise((resolvePromise, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`server did not report its address within ${START_TIMEOUT_MS} ms\n${log.join('\n')}`));
    }, START_TIMEOUT_MS);
    lines.on('line', (line) => {
      remember(line);
      const match = /^listening on (https?):\/\/(\S+)$/.exec(line);
      if (match) {
        clearTimeout(timer);
        resolvePromise(match[2]);
      }
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`server exited before listening (code ${code}, signal ${signal})\n${log.join('\n')}`));
    });
  });

  const url = `${tls ? 'https' : 'http'}://${addr}`;
  return {
    url,
    addr,
    log,
    api: producer(url, undefined, tls?.pem),
    /** SIGTERM, then wait (bounded) for the graceful exit. Returns the exit code. */
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), STOP_TIMEOUT_MS);
      const [code] = await exited;
      clearTimeout(timer);
      return code;
    },
  };
}

/** The producer API, as a program in any language would use it. `ca`: the PEM
 *  certificate to trust for an https:// server with a self-signed one. */
export function producer(baseUrl, token, ca) {
  async function call(method, path, body) {
    // Writes say JSON even without a body: the server refuses any other.
    const headers = { 'Content-Type': 'application/json' };
    if (token) headers.Authorization = `Bearer ${token}`;
    const payload = body === undefined ? undefined : JSON.stringify(body);
    const { status, text } = ca
      ? await httpsCall(baseUrl + path, { method, headers, ca }, payload)
      : await fetch(baseUrl + path, {
        method,
        headers,
        body: payload,
        signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
      }).then(async (response) => ({ status: response.status, text: await response.text() }));
    if (status < 200 || status > 299) throw new Error(`${method} ${path} → ${status} ${text}`);
    return text ? JSON.parse(text) : null;
  }
  return {
    call,
    createTask: (body) => call('POST', '/api/tasks', body),
    progress: (id, body) => call('POST', `/api/tasks/${id}/progress`, body),
    complete: (id, body) => call('POST', `/api/tasks/${id}/complete`, body),
    fail: (id, error) => call('POST', `/api/tasks/${id}/fail`, { error }),
    get: (id) => call('GET', `/api/tasks/${id}`),
  };
}

/** One request with node:https, trusting `options.ca` (fetch cannot be given a CA). */
function httpsCall(url, options, payload) {
  return new Promise((resolvePromise, reject) => {
    const request = httpsRequest(url, { ...options, timeout: REQUEST_TIMEOUT_MS }, (response) => {
      let text = '';
      response.setEncoding('utf8');
      response.on('data', (chunk) => { text += chunk; });
      response.on('end', () => resolvePromise({ status: response.statusCode, text }));
      response.on('error', reject);
    });
    request.on('timeout', () => request.destroy(new Error(`${url}: no answer in ${REQUEST_TIMEOUT_MS} ms`)));
    request.on('error', reject);
    request.end(payload);
  });
}

/** A self-signed certificate for 127.0.0.1 and localhost, made with the openssl command:
 *  `{ cert, key }` (file paths) and `pem` (the certificate's text). */
export async function selfSignedCertificate(dir) {
  const cert = join(dir, 'cert.pem');
  const key = join(dir, 'key.pem');
  const args = [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', key, '-out', cert, '-days', '2', '-subj', '/CN=progress-hub test',
    '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost',
  ];
  await new Promise((resolvePromise, reject) => {
    execFile('openssl', args, (error, _stdout, stderr) => {
      if (error) reject(new Error(`openssl could not make a test certificate (is it installed?): ${error.message}\n${stderr}`));
      else resolvePromise();
    });
  });
  return { cert, key, pem: await readFile(cert, 'utf8') };
}

export async function launchBrowser() {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`Chromium not found at ${CHROMIUM}: install Debian's chromium package`);
  }
  return chromium.launch({
    executablePath: CHROMIUM,
    // The background-networking flags keep Chromium from calling home on a closed network.
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
    timeout: 30000,
  });
}

export async function screenshot(page, name) {
  await mkdir(SCREENSHOTS, { recursive: true });
  const path = join(SCREENSHOTS, `${name}.png`);
  // Finished transitions, so the bar shows the value the text does.
  await page.screenshot({ path, fullPage: true, animations: 'disabled' });
  return path;
}

// Each reader runs in the page and must be self-contained (it is serialized): it takes
// its argument and returns what the page shows.
const readers = {
  text: (sel) => document.querySelector(sel)?.textContent.replace(/\s+/g, ' ').trim() ?? null,
  attribute: ([sel, name]) => document.querySelector(sel)?.getAttribute(name) ?? null,
  visible: (sel) => {
    const node = document.querySelector(sel);
    return Boolean(node && node.getClientRects().length > 0);
  },
};
const predicates = {
  text: ([sel, expected]) =>
    (document.querySelector(sel)?.textContent.replace(/\s+/g, ' ').trim() ?? null) === expected,
  attribute: ([[sel, name], expected]) => (document.querySelector(sel)?.getAttribute(name) ?? null) === expected,
  visible: ([sel, expected]) => {
    const node = document.querySelector(sel);
    return Boolean(node && node.getClientRects().length > 0) === expected;
  },
};

/** Waits (bounded) until the page shows `expected`; on timeout the error says what the
 *  page showed instead. */
async function waitFor(page, kind, arg, expected, timeout) {
  try {
    await page.waitForFunction(predicates[kind], [arg, expected], { timeout });
  } catch (error) {
    const actual = await page.evaluate(readers[kind], arg).catch(() => '(page gone)');
    throw new Error(`${kind} of ${JSON.stringify(arg)}: expected ${JSON.stringify(expected)} ` +
      `within ${timeout} ms, the page shows ${JSON.stringify(actual)} (${error.message.split('\n')[0]})`);
  }
}

/** The whitespace-collapsed text of the first element matching `selector` becomes `expected`. */
export function expectText(page, selector, expected, timeout = 1000) {
  return waitFor(page, 'text', selector, expected, timeout);
}

/** An attribute of the first element matching `selector` becomes `expected`. */
export function expectAttribute(page, selector, name, expected, timeout = 1000) {
  return waitFor(page, 'attribute', [selector, name], expected, timeout);
}

/** Whether the element is displayed (not hidden itself or by an ancestor). */
export function expectVisible(page, selector, visible = true, timeout = 1000) {
  return waitFor(page, 'visible', selector, visible, timeout);
}

/** What the page shows now, for assertions on things that are already settled. */
export function readText(page, selector) {
  return page.evaluate(readers.text, selector);
}
