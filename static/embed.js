// Embeds one task's progress in any page, from the progress-hub that serves this file:
//
//   <div id="job"></div>
//   <script type="module">
//     import { embedTask } from 'https://hub.example.org/static/embed.js';
//     embedTask(document.getElementById('job'), 'task-123');
//   </script>
//
// or, to draw it yourself, `followTask('task-123', (snapshot) => { ... })`.
//
// It follows the task as the bundled page does (static/transport.js): EventSource first,
// which resumes a dropped stream with Last-Event-ID; when the stream fails STREAM_ATTEMPTS
// times in a row without an event, or EventSource is missing, it long-polls (`?since=seq`),
// backing off with jitter while the server is away, and streams again once the server
// answers (after a growing cool-down if the stream failed while polls worked). It stops
// after the terminal event. The embedding page's origin must be on the server's CORS
// allow-list (`--cors-origin`); on a server with `--protect-reads`, pass the task's
// `readToken`.

const EVENT_NAMES = ['progress', 'completed', 'failed', 'cancelled'];
const TERMINAL = new Set(['completed', 'failed', 'cancelled']);
const STREAM_ATTEMPTS = 3;
const LONG_POLL_SECS = 25;
const REQUEST_SLACK_MS = 10000;
const BACKOFF_BASE_MS = 500;
const BACKOFF_MAX_MS = 30000;
const STREAM_COOLDOWN_MIN_MS = 10000;
const STREAM_COOLDOWN_MAX_MS = 300000;

/** The server this module came from: the folder above the one that holds it. */
const HOME = new URL('../', import.meta.url).href;

function backoffMs(attempt) {
  const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** attempt);
  return Math.round(ceiling / 2 + Math.random() * (ceiling / 2));
}

/**
 * Follows one task until it ends. `onSnapshot(snapshot)` gets every snapshot (the polling
 * body, with `task_id` and `seq`); `onStatus({transport, state, error})` says how:
 * transport 'sse' | 'poll', state 'connecting' | 'live' | 'reconnecting' | 'unreachable' |
 * 'closed' | 'gone' | 'error'. Returns `{ stop() }`.
 */
export function followTask(taskId, onSnapshot, { server = HOME, readToken = null, onStatus = () => {} } = {}) {
  const base = new URL(`api/index-progress/${encodeURIComponent(taskId)}`, server.endsWith('/') ? server : `${server}/`);
  const url = (suffix, params) => {
    const target = new URL(base.href + suffix);
    for (const [key, value] of Object.entries(params)) target.searchParams.set(key, value);
    if (readToken) target.searchParams.set('token', readToken);
    return target.href;
  };
  const canStream = typeof globalThis.EventSource === 'function';
  const abort = new AbortController();
  let seq = 0;
  let transport = canStream ? 'sse' : 'poll';
  let stream = null;
  let streamErrors = 0;
  let cooldownMs = 0;
  let streamRetryAt = 0;
  let finished = false;
  let wake = null;

  const report = (state, extra = {}) => onStatus({ transport, state, ...extra });
  const stop = () => {
    finished = true;
    closeStream();
    abort.abort();
    wake?.();
  };
  const deliver = (snapshot) => {
    if (finished || !snapshot || typeof snapshot !== 'object') return;
    if (Number.isInteger(snapshot.seq) && snapshot.seq > seq) seq = snapshot.seq;
    onSnapshot(snapshot);
    if (TERMINAL.has(snapshot.status)) {
      stop();
      report('closed');
    }
  };
  const sleep = (ms) =>
    new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });

  function closeStream() {
    if (!stream) return;
    stream.onerror = null;
    stream.close();
    stream = null;
  }

  function openStream() {
    transport = 'sse';
    report('connecting');
    const source = new EventSource(url('/events', seq > 0 ? { last_event_id: seq } : {}));
    stream = source;
    source.onopen = () => report('live');
    const onEvent = (event) => {
      let snapshot;
      try {
        snapshot = JSON.parse(event.data);
      } catch {
        return;
      }
      streamErrors = 0;
      cooldownMs = 0;
      deliver(snapshot);
    };
    for (const name of EVENT_NAMES) source.addEventListener(name, onEvent);
    source.onerror = () => {
      if (stream !== source || finished) return;
      streamErrors += 1;
      if (source.readyState === EventSource.CLOSED || streamErrors >= STREAM_ATTEMPTS) {
        closeStream();
        pollLoop(true);
      } else {
        report('reconnecting');
      }
    };
  }

  /** One long poll: the snapshot, or `null` when nothing newer came within `waitSecs`. */
  async function poll(waitSecs) {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), waitSecs * 1000 + REQUEST_SLACK_MS);
    const onAbort = () => controller.abort();
    abort.signal.addEventListener('abort', onAbort);
    try {
      // No If-None-Match: a header would cost a CORS preflight; `since` says the same.
      const response = await fetch(url('', { since: seq, wait: waitSecs }), {
        cache: 'no-store',
        signal: controller.signal,
      });
      if (!response.ok) {
        const body = await response.json().catch(() => ({}));
        const retryAfter = Number(response.headers.get('Retry-After'));
        throw Object.assign(new Error(body.error || `HTTP ${response.status}`), {
          status: response.status,
          retryAfterMs: retryAfter > 0 ? retryAfter * 1000 : undefined,
        });
      }
      const snapshot = await response.json();
      return snapshot.seq > seq ? snapshot : null;
    } finally {
      clearTimeout(timer);
      abort.signal.removeEventListener('abort', onAbort);
    }
  }

  async function pollLoop(afterStream) {
    transport = 'poll';
    report(afterStream ? 'reconnecting' : 'connecting');
    let failures = 0;
    let sawOutage = false;
    let first = true;
    while (!finished) {
      let waitSecs = first || failures > 0 ? 0 : LONG_POLL_SECS;
      if (waitSecs > 0 && canStream) {
        waitSecs = Math.max(1, Math.min(waitSecs, Math.ceil((streamRetryAt - Date.now()) / 1000)));
      }
      let snapshot;
      try {
        snapshot = await poll(waitSecs);
      } catch (error) {
        if (finished) return;
        const transient = !error.status || error.status >= 500 || error.status === 429 || error.status === 408;
        if (!transient) {
          finished = true;
          report(error.status === 404 ? 'gone' : 'error', { error: error.message });
          return;
        }
        const delay = error.retryAfterMs ?? backoffMs(failures);
        failures += 1;
        sawOutage = true;
        report('unreachable', { retryAt: Date.now() + delay });
        await sleep(delay);
        first = false;
        continue;
      }
      if (finished) return;
      failures = 0;
      report('live');
      deliver(snapshot);
      if (finished) return;
      if (canStream) {
        if (afterStream && first && !sawOutage) {
          // The server answers but its stream failed: something on the way is in the way.
          cooldownMs = Math.min(STREAM_COOLDOWN_MAX_MS, Math.max(STREAM_COOLDOWN_MIN_MS, cooldownMs * 2));
          streamRetryAt = Date.now() + cooldownMs;
        } else if (sawOutage || Date.now() >= streamRetryAt) {
          streamErrors = 0;
          openStream();
          return;
        }
      }
      first = false;
    }
  }

  if (canStream) openStream();
  else pollLoop(false);
  return { stop };
}

/**
 * Shows one task in `element`: a <progress> bar and a line of text (status, percent,
 * processed/total, current file, or the error). `element.dataset.status` follows the
 * task's status, for styling. Options as for `followTask`. Returns `{ stop() }`.
 */
export function embedTask(element, taskId, options = {}) {
  const bar = document.createElement('progress');
  bar.max = 100;
  const label = document.createElement('span');
  label.className = 'progress-hub-label';
  element.replaceChildren(bar, label);
  element.dataset.status = 'connecting';
  return followTask(
    taskId,
    (snapshot) => {
      bar.value = snapshot.progress ?? 0;
      element.dataset.status = snapshot.status;
      const parts = [snapshot.status, `${snapshot.progress ?? 0}%`];
      if (snapshot.total > 0) parts.push(`${snapshot.processed}/${snapshot.total}`);
      if (snapshot.status === 'failed' && snapshot.error) parts.push(snapshot.error);
      else if (snapshot.current_file) parts.push(snapshot.current_file);
      label.textContent = parts.join(' · ');
    },
    {
      ...options,
      onStatus: (status) => {
        if (status.state === 'gone' || status.state === 'error') {
          element.dataset.status = status.state;
          label.textContent = status.error || status.state;
        }
        options.onStatus?.(status);
      },
    },
  );
}
