// static/embed.js in a page of another origin: a small HTTP server here serves a page
// that imports the module from the hub (on the hub's CORS allow-list) and embeds one task.
// Once with EventSource, once without (the long-poll fallback), and once failing.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { once } from 'node:events';
import { join } from 'node:path';
import { expectAttribute, expectText, launchBrowser, screenshot, startServer, tempDir } from './support.mjs';

const LIVE_MS = 2000;

let browser;
before(async () => {
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
});

/** The embedding site: one page that embeds `?task=` from `?hub=`. */
async function embeddingSite(t) {
  const site = createServer((request, response) => {
    const query = new URL(request.url, 'http://site').searchParams;
    const hub = JSON.stringify(query.get('hub'));
    const task = JSON.stringify(query.get('task'));
    response.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
    response.end(`<!doctype html><title>Someone else's page</title>
<div id="job"></div>
<script type="module">
  const { embedTask } = await import(${hub} + '/static/embed.js');
  window.transports = [];
  embedTask(document.getElementById('job'), ${task}, {
    onStatus: (status) => window.transports.push(status.transport + ':' + status.state),
  });
</script>`);
  });
  site.listen(0, '127.0.0.1');
  await once(site, 'listening');
  t.after(() => site.close());
  return `http://127.0.0.1:${site.address().port}`;
}

async function setUp(t, { withoutEventSource = false } = {}) {
  const site = await embeddingSite(t);
  const dir = await tempDir();
  t.after(() => dir.remove());
  const server = await startServer({ dataDir: join(dir.path, 'data'), extraArgs: ['--cors-origin', site] });
  t.after(() => server.stop());
  const context = await browser.newContext();
  t.after(() => context.close());
  if (withoutEventSource) {
    await context.addInitScript(() => {
      delete window.EventSource;
    });
  }
  const page = await context.newPage();
  const problems = [];
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
  page.on('console', (message) => {
    if (message.type() === 'error') problems.push(`console: ${message.text()}`);
  });
  return { site, server, page, problems };
}

async function followToTheEnd(t, { withoutEventSource }) {
  const { site, server, page, problems } = await setUp(t, { withoutEventSource });
  const { api } = server;
  const { task_id: id } = await api.createTask({ name: 'Embedded', total: 5 });
  await page.goto(`${site}/?hub=${encodeURIComponent(server.url)}&task=${id}`);
  await expectText(page, '#job span', 'pending · 0% · 0/5', 5000);
  await api.progress(id, { processed: 2, current_file: 'b.txt' });
  await expectText(page, '#job span', 'processing · 40% · 2/5 · b.txt', LIVE_MS);
  await expectAttribute(page, '#job progress', 'value', '40', LIVE_MS);
  await api.complete(id, { results: { n: 5 } });
  await expectText(page, '#job span', 'completed · 100% · 2/5 · b.txt', LIVE_MS);
  await expectAttribute(page, '#job', 'data-status', 'completed', LIVE_MS);
  await screenshot(page, `embed-${withoutEventSource ? 'poll' : 'sse'}-completed`);
  const transports = await page.evaluate(() => window.transports);
  assert.deepEqual(problems, []);
  return transports;
}

test('embed.js follows a task from another origin over SSE', { timeout: 60000 }, async (t) => {
  const transports = await followToTheEnd(t, { withoutEventSource: false });
  assert.ok(transports.includes('sse:live'), JSON.stringify(transports));
  assert.ok(!transports.some((s) => s.startsWith('poll:')), JSON.stringify(transports));
  assert.equal(transports.at(-1), 'sse:closed');
});

test('embed.js falls back to long polling without EventSource', { timeout: 60000 }, async (t) => {
  const transports = await followToTheEnd(t, { withoutEventSource: true });
  assert.ok(transports.includes('poll:live'), JSON.stringify(transports));
  assert.ok(!transports.some((s) => s.startsWith('sse:')), JSON.stringify(transports));
  assert.equal(transports.at(-1), 'poll:closed');
});

test('embed.js shows a failed task with its error, and an unknown one as gone', { timeout: 60000 }, async (t) => {
  const { site, server, page, problems } = await setUp(t);
  const { api } = server;
  const { task_id: id } = await api.createTask({ name: 'Doomed', total: 5 });
  await api.progress(id, { processed: 1 });
  await page.goto(`${site}/?hub=${encodeURIComponent(server.url)}&task=${id}`);
  await expectText(page, '#job span', 'processing · 20% · 1/5', 5000);
  await api.fail(id, 'disk full');
  await expectText(page, '#job span', 'failed · 20% · 1/5 · disk full', LIVE_MS);
  await expectAttribute(page, '#job', 'data-status', 'failed', LIVE_MS);
  assert.deepEqual(problems, []);

  // An unknown task: the stream answers 404, the poll says it is gone.
  await page.goto(`${site}/?hub=${encodeURIComponent(server.url)}&task=no-such-task`);
  await expectAttribute(page, '#job', 'data-status', 'gone', 10000);
  await expectText(page, '#job span', 'Task not found', LIVE_MS);
});
