// The page's entry point: decides between the dashboard (`/`) and one task (`/?task=ID`),
// keeps the newest snapshot of each task, and wires the forms to the API. Transport lives
// in transport.js, DOM building in render.js.

import { followAll, followTask, HttpError, isTerminal } from './transport.js';
import { TaskView, renderConnection, renderHits, showMessage } from './render.js';

const $ = (id) => document.getElementById(id);
const focusId = new URLSearchParams(location.search).get('task');
// On a server with --protect-reads, a link to `/?task=ID&token=READ_TOKEN` opens the task.
const readToken = new URLSearchParams(location.search).get('token');
const template = $('task-template');
const tasksEl = $('tasks');
const connectionEl = $('connection');
/** task_id → { view, snapshot }: the newest snapshot of every task shown. */
const tasks = new Map();
const WRITE_TIMEOUT_MS = 15000;

// ---- tasks -------------------------------------------------------------------------

function accept(snapshot) {
  if (!snapshot || typeof snapshot.task_id !== 'string') return;
  if (focusId && snapshot.task_id !== focusId) return;
  let entry = tasks.get(snapshot.task_id);
  // Snapshots are cumulative: an older or repeated one (list and stream overlap, a
  // replay after reconnecting) has nothing new. Except an end: a task's terminal
  // snapshot is its last word whatever its seq, and a card must never say "processing"
  // once the task is over.
  if (entry && Number.isInteger(snapshot.seq) && snapshot.seq <= entry.snapshot.seq) {
    const ends = isTerminal(snapshot.status) && !isTerminal(entry.snapshot.status);
    if (!ends) return;
  }
  if (!entry) {
    entry = { view: new TaskView(template, { focused: Boolean(focusId), onCancel: cancel }) };
    tasks.set(snapshot.task_id, entry);
    insertNewestFirst(entry.view.el, snapshot.created_at || '');
  }
  entry.snapshot = snapshot;
  entry.view.el.dataset.createdAt = snapshot.created_at || '';
  entry.view.update(snapshot);
  afterChange();
}

/** Timestamps share one RFC 3339 UTC format, so they sort as strings. */
function insertNewestFirst(node, createdAt) {
  const before = [...tasksEl.children].find((other) => (other.dataset.createdAt || '') < createdAt);
  tasksEl.insertBefore(node, before || null);
}

function afterChange() {
  $('empty').hidden = tasks.size > 0;
  const indexed = [...tasks.values()].some(
    ({ snapshot }) => snapshot.job === 'index-folder' && snapshot.status === 'completed',
  );
  $('search').hidden = !indexed;
  if (focusId) {
    const entry = tasks.get(focusId);
    if (entry) {
      const { snapshot } = entry;
      document.title = `${snapshot.progress}% · ${snapshot.name || snapshot.task_id} — progress-hub`;
    }
  }
}

// ---- writes ------------------------------------------------------------------------

async function send(url, body) {
  // Every write says it is JSON, even without a body: the server refuses any other.
  const init = {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    signal: AbortSignal.timeout(WRITE_TIMEOUT_MS),
  };
  if (body !== undefined) init.body = JSON.stringify(body);
  let response;
  try {
    response = await fetch(url, init);
  } catch {
    throw new Error('The server did not answer. Try again when it is back.');
  }
  if (!response.ok) throw await HttpError.from(response);
  return response.json();
}

/** What a failed write tells the person who clicked. */
function describe(error) {
  if (error instanceof HttpError && error.status === 401) {
    return 'This server is write-protected: starting and cancelling tasks needs its API token, ' +
      'which this page does not send (401). Use the producer API with the token instead.';
  }
  if (error instanceof HttpError) return `${error.message} (${error.status})`;
  return error.message;
}

async function cancel(view) {
  view.setBusy(true);
  view.showActionError('');
  try {
    accept(await send(`/api/tasks/${encodeURIComponent(view.taskId)}/cancel`));
  } catch (error) {
    view.showActionError(describe(error));
    view.setBusy(false);
  }
}

function taskLink(taskId, text) {
  const link = document.createElement('a');
  link.href = `/?task=${encodeURIComponent(taskId)}`;
  link.textContent = text;
  return link;
}

$('index-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const input = $('folder');
  const message = $('index-message');
  const button = event.currentTarget.querySelector('button');
  const folder = input.value.trim();
  if (!folder) {
    showMessage(message, 'Enter the folder to index.');
    input.focus();
    return;
  }
  button.disabled = true;
  try {
    const started = await send('/api/index-folder', { folder });
    showMessage(message, ['Indexing started: ', taskLink(started.task_id, folder)], 'info');
    input.value = '';
  } catch (error) {
    showMessage(message, describe(error));
  } finally {
    button.disabled = false;
  }
});

$('search-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const q = $('query').value.trim();
  const message = $('search-message');
  const hits = $('hits');
  if (!q) {
    showMessage(message, 'Enter words to search for.');
    return;
  }
  try {
    const response = await fetch(`/api/search?q=${encodeURIComponent(q)}`, {
      cache: 'no-store',
      signal: AbortSignal.timeout(WRITE_TIMEOUT_MS),
    });
    if (!response.ok) throw await HttpError.from(response);
    const body = await response.json();
    const found = body.hits || [];
    const total = Number.isInteger(body.total_hits) ? body.total_hits : found.length;
    renderHits(hits, found);
    const count = total === 1 ? '1 match' : `${total} matches`;
    const shown = found.length < total ? ` (showing the best ${found.length})` : '';
    showMessage(message, total ? `${count} for “${q}”${shown}` : `No matches for “${q}”`, 'info');
  } catch (error) {
    hits.replaceChildren();
    showMessage(message, error instanceof HttpError ? describe(error) : 'The server did not answer.');
  }
});

// ---- connection --------------------------------------------------------------------

let lastStatus = { state: 'connecting' };
function onStatus(status) {
  lastStatus = status;
  renderConnection(connectionEl, status);
  document.body.dataset.connection = status.state;
  if (focusId && (status.state === 'gone' || status.state === 'error')) {
    const empty = $('empty');
    const known = tasks.has(focusId);
    if (status.state === 'error') {
      empty.textContent = `Cannot follow task “${focusId}”: ${status.error}`;
    } else if (known) {
      empty.textContent = 'The server no longer has this task (it expired, or the server ' +
        'restarted without keeping it). Shown below is the last state this page saw.';
    } else {
      empty.textContent = `There is no task “${focusId}” on this server (it may have expired).`;
    }
    empty.hidden = false;
  }
}
// Counts down the next retry while the server is away.
setInterval(() => {
  if (lastStatus.state === 'unreachable') renderConnection(connectionEl, lastStatus);
}, 1000);

if (focusId) {
  $('start').hidden = true;
  $('back').hidden = false;
  $('tasks-title').textContent = 'Task';
  $('tasks-title').classList.add('visually-hidden');
  $('empty').textContent = 'Loading…';
  $('empty').hidden = false;
  followTask(focusId, { onSnapshot: accept, onStatus }, readToken);
} else {
  followAll({ onSnapshot: accept, onStatus, onSynced: afterChange });
}
