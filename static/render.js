// Rendering: turns snapshots, search hits and the transport's status into DOM. Only ever
// sets textContent and attributes (never HTML from the server), so a file name or a
// producer's message cannot inject markup.

const STATUS_LABELS = {
  pending: 'Pending',
  processing: 'Processing',
  completed: 'Completed',
  failed: 'Failed',
  cancelled: 'Cancelled',
};
const TERMINAL = new Set(['completed', 'failed', 'cancelled']);
const numberFormat = new Intl.NumberFormat('en-US');
const rateFormat = new Intl.NumberFormat('en-US', { maximumFractionDigits: 1 });

export function formatCount(n) {
  return Number.isFinite(n) ? numberFormat.format(n) : '–';
}

/** 0.25 → "250 ms", 75 → "1m 15s", 3700 → "1h 01m". */
export function formatDuration(totalSecs) {
  if (!Number.isFinite(totalSecs) || totalSecs < 0) return '–';
  if (totalSecs < 1 && !Number.isInteger(totalSecs)) return `${Math.round(totalSecs * 1000)} ms`;
  const secs = Math.round(totalSecs);
  if (secs < 60) return `${secs}s`;
  const h = Math.floor(secs / 3600);
  const m = Math.floor((secs % 3600) / 60);
  const s = secs % 60;
  return h > 0 ? `${h}h ${String(m).padStart(2, '0')}m` : `${m}m ${String(s).padStart(2, '0')}s`;
}

export function formatRate(perSecond) {
  if (!Number.isFinite(perSecond)) return '–';
  return `${rateFormat.format(perSecond)} files/s`;
}

function humanize(key) {
  const words = String(key).replace(/[_-]+/g, ' ').trim();
  return words.charAt(0).toUpperCase() + words.slice(1);
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** 1536 → "1.5 KiB". */
export function formatBytes(n) {
  if (!Number.isFinite(n)) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${value} B` : `${rateFormat.format(value)} ${units[unit]}`;
}

const LISTED_ITEMS = 8;

/** One value of a results object, read as a person would want it: sizes and durations by
 *  their key's name, lists as lists, small objects inline, anything else as JSON. */
function renderValue(key, value) {
  if (value === null || value === undefined) return document.createTextNode('–');
  if (typeof value === 'number') {
    if (/(^|_)bytes$/.test(key)) return document.createTextNode(formatBytes(value));
    if (/_ms$/.test(key)) return document.createTextNode(formatDuration(value / 1000));
    return document.createTextNode(formatCount(value));
  }
  if (typeof value !== 'object') return document.createTextNode(String(value));
  const isPrimitive = (v) => v === null || typeof v !== 'object';
  if (Array.isArray(value)) {
    if (value.length === 0) return el('span', 'none', 'none');
    const list = el('ul', 'value-list');
    for (const item of value.slice(0, LISTED_ITEMS)) {
      const text = isPrimitive(item)
        ? String(item)
        : Object.values(item).every(isPrimitive)
          ? Object.values(item).join(' — ')
          : JSON.stringify(item);
      list.append(el('li', '', text));
    }
    if (value.length > LISTED_ITEMS) list.append(el('li', 'more', `and ${value.length - LISTED_ITEMS} more`));
    return list;
  }
  const entries = Object.entries(value);
  if (entries.length === 0) return el('span', 'none', 'none');
  if (entries.every(([, v]) => isPrimitive(v))) {
    return document.createTextNode(entries.map(([k, v]) => `${k}: ${typeof v === 'number' ? formatCount(v) : v}`).join(', '));
  }
  return el('code', '', JSON.stringify(value));
}

/** Results are any JSON: an object reads best as a list of labelled values, anything else
 *  is shown as indented JSON. */
function renderResults(results) {
  if (!results || typeof results !== 'object' || Array.isArray(results)) {
    return el('pre', 'json', JSON.stringify(results, null, 2));
  }
  const list = el('dl', 'result-list');
  const wide = [];
  for (const [key, value] of Object.entries(results)) {
    const pair = el('div', 'result');
    const dd = el('dd');
    dd.append(renderValue(key, value));
    pair.append(el('dt', '', humanize(key.replace(/_ms$/, ''))), dd);
    // Lists and long text take a whole row, after the short values.
    if ((Array.isArray(value) && value.length > 0) || (typeof value === 'string' && value.length > 40)) {
      pair.classList.add('wide');
      wide.push(pair);
    } else {
      list.append(pair);
    }
  }
  list.append(...wide);
  return list;
}

/** One task's card, updated in place on every snapshot. */
export class TaskView {
  constructor(template, { focused, onCancel }) {
    this.el = template.content.firstElementChild.cloneNode(true);
    this.focused = focused;
    const q = (selector) => this.el.querySelector(selector);
    this.parts = {
      link: q('.task-link'),
      status: q('.status'),
      stalled: q('.stalled'),
      bar: q('.bar'),
      fill: q('.bar-fill'),
      percent: q('.percent'),
      count: q('.count'),
      rate: q('.rate'),
      rateStat: q('.rate-stat'),
      eta: q('.eta'),
      etaLabel: q('.eta-label'),
      current: q('.current'),
      dir: q('.dir'),
      base: q('.base'),
      message: q('.message'),
      error: q('.error'),
      results: q('.results'),
      meta: q('.meta'),
      cancel: q('.cancel'),
      actionError: q('.task-error'),
    };
    if (focused) this.el.classList.add('focused');
    this.parts.cancel.addEventListener('click', () => onCancel(this));
    this.resultsShown = undefined;
  }

  update(s) {
    const p = this.parts;
    const terminal = TERMINAL.has(s.status);
    const name = s.name || s.task_id;
    const progress = Number.isFinite(s.progress) ? s.progress : 0;
    this.taskId = s.task_id;
    this.el.dataset.status = s.status;
    this.el.dataset.taskId = s.task_id;

    p.link.textContent = name;
    p.link.title = name;
    p.link.href = `/?task=${encodeURIComponent(s.task_id)}`;
    p.status.textContent = STATUS_LABELS[s.status] || s.status;
    p.stalled.hidden = !s.stalled || terminal;

    p.bar.setAttribute('aria-valuenow', String(progress));
    p.bar.setAttribute('aria-label', `Progress of ${name}`);
    p.bar.setAttribute(
      'aria-valuetext',
      s.total > 0 ? `${progress}%, ${s.processed} of ${s.total} files` : `${progress}%`,
    );
    p.fill.style.width = `${progress}%`;
    p.percent.textContent = `${progress}%`;
    p.count.textContent =
      s.total > 0 ? `${formatCount(s.processed)} / ${formatCount(s.total)}` : formatCount(s.processed || NaN);
    // A finished task has no rate or ETA left; how long it took says more.
    p.rateStat.hidden = terminal;
    p.rate.textContent = formatRate(s.rate_per_second ?? NaN);
    p.etaLabel.textContent = terminal ? 'Took' : 'ETA';
    p.eta.textContent = terminal
      ? formatDuration((Date.parse(s.updated_at) - Date.parse(s.created_at)) / 1000)
      : formatDuration(s.eta_seconds ?? NaN);

    const file = s.current_file || '';
    p.current.hidden = !file || terminal;
    const slash = file.lastIndexOf('/');
    p.dir.textContent = file.slice(0, slash + 1);
    p.base.textContent = file.slice(slash + 1);
    p.current.title = file;

    // A job's message names its current step: once it has ended, that step is over.
    p.message.hidden = !s.message || terminal;
    p.message.textContent = s.message || '';

    p.error.hidden = s.status !== 'failed';
    p.error.textContent = s.status === 'failed' ? s.error || 'The task failed.' : '';

    const showResults = s.status === 'completed' && s.results !== undefined && s.results !== null;
    if (showResults && this.resultsShown !== s.seq) {
      p.results.replaceChildren(el('h4', '', 'Results'), renderResults(s.results));
      this.resultsShown = s.seq;
    }
    p.results.hidden = !showResults;

    const updated = s.updated_at ? new Date(s.updated_at) : null;
    p.meta.textContent = updated && !Number.isNaN(updated.getTime())
      ? `${s.task_id} · updated ${updated.toLocaleTimeString()}`
      : s.task_id;
    p.cancel.hidden = terminal;
    if (terminal) this.setBusy(false);
  }

  setBusy(busy) {
    this.parts.cancel.disabled = busy;
    this.parts.cancel.textContent = busy ? 'Cancelling…' : 'Cancel';
  }

  showActionError(message) {
    this.parts.actionError.hidden = !message;
    this.parts.actionError.textContent = message || '';
  }
}

/** A search snippet is HTML (escaped text, matches in `<b>`). It is parsed in an inert
 *  document and rebuilt from its text alone, with <mark> around the matches, so nothing
 *  else a file contained can reach the page. */
function highlighted(snippet) {
  const fragment = document.createDocumentFragment();
  const body = new DOMParser().parseFromString(String(snippet), 'text/html').body;
  for (const node of body.childNodes) {
    const match = node.nodeType === Node.ELEMENT_NODE && ['B', 'MARK', 'EM', 'STRONG'].includes(node.nodeName);
    fragment.append(match ? el('mark', '', node.textContent) : document.createTextNode(node.textContent));
  }
  return fragment;
}

/** A path as a muted directory and a plain file name. */
function pathNode(path, className) {
  const node = el('span', `${className} path`);
  const slash = path.lastIndexOf('/');
  node.append(el('span', 'dir', path.slice(0, slash + 1)), el('span', 'base', path.slice(slash + 1)));
  node.title = path;
  return node;
}

export function renderHits(list, hits) {
  list.replaceChildren(
    ...hits.map((hit) => {
      const item = el('li', 'hit');
      const head = el('div', 'hit-head');
      head.append(pathNode(String(hit.path ?? ''), 'hit-path'));
      if (Number.isFinite(hit.score)) head.append(el('span', 'hit-score', `score ${hit.score.toFixed(2)}`));
      const snippet = el('p', 'hit-snippet');
      snippet.append(highlighted(hit.snippet ?? ''));
      item.append(head, snippet);
      return item;
    }),
  );
}

/** Shows a message under a form; `kind` is 'error' or 'info'. An empty text hides it. */
export function showMessage(node, text, kind = 'error') {
  node.hidden = !text;
  node.dataset.kind = kind;
  node.replaceChildren(...(Array.isArray(text) ? text : [text || '']));
}

/** The indicator of which transport is live and whether the server is reachable. */
export function renderConnection(node, status, now = Date.now()) {
  node.dataset.transport = status.transport || 'none';
  node.dataset.state = status.state;
  const via = status.transport === 'poll' ? 'polling' : 'streaming';
  let text;
  switch (status.state) {
    case 'live':
      text = `Live · ${via}`;
      break;
    case 'reconnecting':
      text = 'Reconnecting…';
      break;
    case 'unreachable': {
      const secs = Math.max(0, Math.ceil(((status.retryAt ?? now) - now) / 1000));
      text = secs > 0 ? `Server unreachable · retry in ${secs}s` : 'Server unreachable · retrying';
      break;
    }
    case 'closed':
      text = 'Finished · up to date';
      break;
    case 'gone':
      text = 'Task not found';
      break;
    case 'error':
      text = status.error ? `Error: ${status.error}` : 'Error';
      break;
    default:
      text = 'Connecting…';
  }
  node.querySelector('.connection-text').textContent = text;
  node.title = status.transport ? `Transport: ${via === 'polling' ? 'polling (long poll)' : 'Server-Sent Events'}` : '';
}
