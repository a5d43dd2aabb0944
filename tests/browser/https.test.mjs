// HTTPS in a real Chromium: a server with a self-signed certificate (the browser context
// ignores certificate errors, as a developer's browser told to trust it would), HTTP/2
// by ALPN, and so more than HTTP/1.1's 6 streams per origin live on one page.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import {
  expectAttribute, expectText, launchBrowser, screenshot, selfSignedCertificate, startServer,
  tempDir,
} from './support.mjs';

const LIVE_MS = 1000;
const STREAMS = 20;

let browser;
before(async () => {
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
});

async function httpsServer(t) {
  const dir = await tempDir();
  t.after(() => dir.remove());
  const tls = await selfSignedCertificate(dir.path);
  const server = await startServer({ dataDir: join(dir.path, 'data'), tls });
  t.after(() => server.stop());
  assert.match(server.url, /^https:\/\//);
  return server;
}

async function newPage(t) {
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  t.after(() => context.close());
  const page = await context.newPage();
  const problems = [];
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
  page.on('console', (message) => {
    if (message.type() === 'error') problems.push(`console: ${message.text()}`);
  });
  return { page, problems };
}

test(`${STREAMS} task streams on one page over https:// are all live at once (HTTP/2)`, { timeout: 60000 }, async (t) => {
  const server = await httpsServer(t);
  const ids = Array.from({ length: STREAMS }, (_, n) => `https-task-${n}`);
  for (const id of ids) await server.api.createTask({ id, total: 10 });

  // The bundled dashboard (its own stream of all tasks), and then 20 more streams.
  const { page, problems } = await newPage(t);
  const navigation = await page.goto(`${server.url}/`);
  assert.equal(navigation.status(), 200);
  assert.equal(
    await page.evaluate(() => performance.getEntriesByType('navigation')[0].nextHopProtocol),
    'h2',
  );

  // A plain EventSource per task, as any page would open them; each keeps the newest event.
  await page.evaluate((taskIds) => {
    window.latest = {};
    window.errors = 0;
    for (const id of taskIds) {
      const stream = new EventSource(`/api/index-progress/${id}/events`);
      const keep = (name) => (event) => {
        window.latest[id] = { event: name, ...JSON.parse(event.data) };
        if (name === 'completed') stream.close();
      };
      stream.addEventListener('progress', keep('progress'));
      stream.addEventListener('completed', keep('completed'));
      stream.addEventListener('error', () => { window.errors += 1; });
    }
  }, ids);

  // Waits until every stream's newest event passes `check`: its snapshot, the change
  // published to its task, or the task's end.
  const everyTask = (check) =>
    page.waitForFunction(
      ([taskIds, what]) => taskIds.every((id, n) => {
        const event = window.latest[id];
        if (event === undefined) return false;
        if (what === 'snapshot') return event.seq >= 1;
        if (what === 'progressed') return event.processed === 7 && event.current_file === `file-${n}.pdf`;
        return event.event === 'completed';
      }),
      [ids, check],
      { timeout: 5000 },
    ).catch(async (error) => {
      const seen = await page.evaluate(() => window.latest);
      throw new Error(`${check}: not every stream got there: ${JSON.stringify(seen)} (${error.message.split('\n')[0]})`);
    });

  // Every stream has its snapshot: all 20 are open together (beside the dashboard's),
  // which HTTP/1.1's six connections per origin could not do.
  await everyTask('snapshot');

  // Each stream then sees its own task's next change, live.
  for (const [n, id] of ids.entries()) {
    await server.api.progress(id, { processed: 7, current_file: `file-${n}.pdf` });
  }
  await everyTask('progressed');
  assert.equal(await page.evaluate((id) => window.latest[id].progress, ids[0]), 70);

  for (const id of ids) await server.api.complete(id, { results: { ok: true } });
  await everyTask('completed');
  assert.equal(await page.evaluate(() => window.errors), 0);
  const protocols = await page.evaluate(() => performance.getEntriesByType('resource')
    .filter((entry) => entry.name.includes('/api/index-progress/'))
    .map((entry) => entry.nextHopProtocol));
  assert.deepEqual(protocols, Array(STREAMS).fill('h2'));
  assert.deepEqual(problems, []);
});

test('the bundled page follows a task live over https://', { timeout: 60000 }, async (t) => {
  const server = await httpsServer(t);
  const { task_id: id } = await server.api.createTask({ id: 'secure-task', name: 'Secure task', total: 4 });
  const { page, problems } = await newPage(t);
  await page.goto(`${server.url}/?task=${id}`);
  const card = (part) => `.task[data-task-id="${id}"] ${part}`;
  await expectText(page, card('.status'), 'Pending', 5000);
  await expectAttribute(page, '#connection', 'data-transport', 'sse', 5000);
  await expectAttribute(page, '#connection', 'data-state', 'live', 5000);
  for (let processed = 1; processed <= 3; processed += 1) {
    await server.api.progress(id, { processed, current_file: `part-${processed}.txt` });
    await expectText(page, card('.percent'), `${processed * 25}%`, LIVE_MS);
    await expectText(page, card('.current .path'), `part-${processed}.txt`, LIVE_MS);
  }
  await server.api.complete(id, { results: { parts: 4 } });
  await expectText(page, card('.status'), 'Completed', LIVE_MS);
  await screenshot(page, 'https-task-completed');
  assert.deepEqual(problems, []);
});

test("Chromium's WebSocket over wss:// beside an HTTP/2 page: every event, then close 1000", { timeout: 60000 }, async (t) => {
  const server = await httpsServer(t);
  const { task_id: id } = await server.api.createTask({ id: 'over-wss', total: 2 });
  const { page, problems } = await newPage(t);
  await page.goto(server.url);
  // HTTP/2 offers no WebSocket (RFC 8441 is not enabled), so Chromium opens an HTTP/1.1
  // connection for it and upgrades that.
  await page.evaluate((url) => {
    window.wsLog = { events: [], close: null };
    const socket = new WebSocket(url);
    socket.onmessage = (message) => window.wsLog.events.push(JSON.parse(message.data));
    socket.onclose = (e) => { window.wsLog.close = { code: e.code, reason: e.reason, wasClean: e.wasClean }; };
  }, `${server.url.replace(/^https/, 'wss')}/api/index-progress/${id}/ws`);
  await page.waitForFunction(() => window.wsLog.events.length === 1, null, { timeout: 5000 });
  await server.api.progress(id, { processed: 1 });
  await server.api.complete(id, { results: { ok: true } });
  await page.waitForFunction(() => window.wsLog.close !== null, null, { timeout: 20000 });
  const log = await page.evaluate(() => window.wsLog);
  assert.deepEqual(log.events.map((e) => e.event), ['progress', 'progress', 'completed']);
  assert.deepEqual(log.close, { code: 1000, reason: 'task finished', wasClean: true });
  assert.deepEqual(problems, []);
});
