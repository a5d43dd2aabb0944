// Following progress the way a careful client does. One Follower keeps one view of the
// server current (one task, or every task) and reports which transport is live:
//
// - EventSource first. The browser resumes a dropped stream by itself with Last-Event-ID;
//   a stream this module opens again passes the last seq it has as ?last_event_id=.
// - A task follower closes after the terminal event: the task never changes again.
// - Without EventSource, or when the stream fails STREAM_ATTEMPTS times in a row without
//   delivering anything, it polls: long poll with the seq as ETag (If-None-Match) for one
//   task, the task list every few seconds for the dashboard.
// - While the server is unreachable it backs off exponentially with jitter.
// - When the server answers again it goes back to streaming; if the stream failed while
//   the server answered polls, streaming is retried only after a growing cool-down.
//
// Snapshots are cumulative and carry a per-task seq, so the caller keeps the newest one
// per task and may safely receive the same snapshot twice.

const EVENT_NAMES = ['progress', 'completed', 'failed', 'cancelled'];
const TERMINAL = new Set(['completed', 'failed', 'cancelled']);

/** Stream errors in a row, with no event in between, before switching to polling. */
const STREAM_ATTEMPTS = 3;
/** How long one long poll may be held by the server (it caps this at 30). */
const LONG_POLL_SECS = 25;
/** The dashboard has no long poll: it re-reads the task list this often. */
const LIST_POLL_MS = 2000;
/** The shortest time between two polls that bring nothing new, whatever the server
 *  answers: a long poll answered at once (a proxy that ignores the wait, a server that
 *  says "not modified" at once) must not turn into a tight loop. */
const MIN_IDLE_POLL_GAP_MS = 1000;
/** Slack on top of a long poll's wait before the request is abandoned. */
const REQUEST_SLACK_MS = 10000;
const BACKOFF_BASE_MS = 500;
const BACKOFF_MAX_MS = 30000;
const STREAM_COOLDOWN_MIN_MS = 10000;
const STREAM_COOLDOWN_MAX_MS = 300000;

export function isTerminal(status) {
  return TERMINAL.has(status);
}

/** Exponential backoff with "equal jitter": half fixed, half random, so that many pages
 *  that lost the same server do not all return at the same instant. */
export function backoffMs(attempt) {
  const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** attempt);
  return Math.round(ceiling / 2 + Math.random() * (ceiling / 2));
}

/** A non-2xx answer, with the server's `{"error": ...}` message when it sent one. */
export class HttpError extends Error {
  constructor(status, message, retryAfterMs) {
    super(message || `HTTP ${status}`);
    this.status = status;
    this.retryAfterMs = retryAfterMs;
  }

  static async from(response) {
    let message = '';
    try {
      message = (await response.json()).error || '';
    } catch {
      // Not JSON (a proxy's error page, say): the status says enough.
    }
    const retryAfter = Number(response.headers.get('Retry-After'));
    const retryAfterMs = Number.isFinite(retryAfter) && retryAfter > 0 ? retryAfter * 1000 : undefined;
    return new HttpError(response.status, message, retryAfterMs);
  }

  /** A server that is away or overloaded: worth retrying later. */
  get transient() {
    return this.status >= 500 || this.status === 429 || this.status === 408;
  }
}

/** Fetch with a deadline; `outer` (optional) cancels it early. */
async function fetchWithin(url, options, timeoutMs, outer) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), timeoutMs);
  const onOuterAbort = () => controller.abort();
  outer?.addEventListener('abort', onOuterAbort);
  try {
    return await fetch(url, { ...options, cache: 'no-store', signal: controller.signal });
  } finally {
    clearTimeout(timer);
    outer?.removeEventListener('abort', onOuterAbort);
  }
}

/**
 * One task: its SSE stream, its long poll. `readToken` is the task's read token on a
 * server started with --protect-reads (EventSource cannot send headers, so it rides in
 * the query string).
 */
function taskSource(taskId, readToken) {
  const base = `/api/index-progress/${encodeURIComponent(taskId)}`;
  const token = readToken ? `token=${encodeURIComponent(readToken)}` : '';
  const withToken = (url) => (token ? `${url}${url.includes('?') ? '&' : '?'}${token}` : url);
  return {
    endsWithTerminal: true,
    pollPauseMs: 0,
    resyncOnOpen: false,
    streamUrl: (seq) => withToken(seq > 0 ? `${base}/events?last_event_id=${seq}` : `${base}/events`),
    async poll(seq, waitSecs, signal) {
      const headers = seq > 0 ? { 'If-None-Match': `"${seq}"` } : {};
      const url = withToken(`${base}?since=${seq}&wait=${waitSecs}`);
      const response = await fetchWithin(url, { headers }, waitSecs * 1000 + REQUEST_SLACK_MS, signal);
      if (response.status === 304) return [];
      if (!response.ok) throw await HttpError.from(response);
      return [await response.json()];
    },
  };
}

/** Every task: the all-tasks stream, the task list. */
function allSource() {
  return {
    endsWithTerminal: false,
    pollPauseMs: LIST_POLL_MS,
    // The stream's ids are a server-wide counter that a restart resets, and on connect it
    // sends only unfinished tasks: re-reading the list on every (re)connect covers both.
    resyncOnOpen: true,
    streamUrl: () => '/api/events',
    async poll(_seq, _waitSecs, signal) {
      const response = await fetchWithin('/api/tasks', {}, REQUEST_SLACK_MS, signal);
      if (!response.ok) throw await HttpError.from(response);
      return (await response.json()).tasks || [];
    },
  };
}

/**
 * handlers: onSnapshot(snapshot); onSynced() after a full read (task list or poll);
 * onStatus({transport, state, retryAt, error}), where
 * transport is 'sse' | 'poll' and state is 'connecting' | 'live' | 'reconnecting' |
 * 'unreachable' | 'closed' | 'gone' | 'error'.
 */
class Follower {
  constructor(source, handlers) {
    this.source = source;
    this.handlers = handlers;
    this.canStream = typeof window.EventSource === 'function';
    this.seq = 0; // newest seq seen (one task only)
    this.stream = null;
    this.streamErrors = 0;
    this.streamCooldownMs = 0;
    this.streamRetryAt = 0;
    this.finished = false;
    this.abort = new AbortController();
    this.wake = null;
  }

  start() {
    if (this.canStream) this.openStream();
    else this.pollLoop(false);
    return this;
  }

  stop() {
    this.finished = true;
    this.closeStream();
    this.abort.abort();
    this.wake?.();
  }

  report(transport, state, extra = {}) {
    this.handlers.onStatus?.({ transport, state, ...extra });
  }

  deliver(snapshot) {
    if (this.finished || !snapshot || typeof snapshot !== 'object') return;
    if (Number.isInteger(snapshot.seq) && snapshot.seq > this.seq) this.seq = snapshot.seq;
    this.handlers.onSnapshot(snapshot);
    if (this.source.endsWithTerminal && isTerminal(snapshot.status)) {
      this.stop();
      this.report(this.transport, 'closed');
    }
  }

  openStream() {
    this.transport = 'sse';
    this.report('sse', 'connecting');
    const stream = new EventSource(this.source.streamUrl(this.seq));
    this.stream = stream;
    stream.onopen = () => {
      this.report('sse', 'live');
      if (this.source.resyncOnOpen) this.resync();
    };
    const onEvent = (event) => {
      let snapshot;
      try {
        snapshot = JSON.parse(event.data);
      } catch {
        return;
      }
      this.streamErrors = 0;
      this.streamCooldownMs = 0;
      this.deliver(snapshot);
    };
    for (const name of EVENT_NAMES) stream.addEventListener(name, onEvent);
    stream.onerror = () => {
      if (this.stream !== stream || this.finished) return;
      // CLOSED: the browser gave up for good (an error status, or 204 when there is
      // nothing more to send). CONNECTING: it is retrying by itself with Last-Event-ID.
      this.streamErrors += 1;
      if (stream.readyState === EventSource.CLOSED || this.streamErrors >= STREAM_ATTEMPTS) {
        this.closeStream();
        this.pollLoop(true);
      } else {
        this.report('sse', 'reconnecting');
      }
    };
  }

  closeStream() {
    if (!this.stream) return;
    this.stream.onerror = null;
    this.stream.close();
    this.stream = null;
  }

  async resync() {
    try {
      const snapshots = await this.source.poll(0, 0, this.abort.signal);
      for (const snapshot of snapshots) this.deliver(snapshot);
      this.handlers.onSynced?.();
    } catch {
      // The stream is live; the next reconnect tries again.
    }
  }

  /** Polls until the task ends, the follower stops, or streaming is worth another try.
   *  `afterStream`: the stream just failed, so find out whether the server or the
   *  stream is at fault before trusting either. */
  async pollLoop(afterStream) {
    this.transport = 'poll';
    this.report('poll', afterStream ? 'reconnecting' : 'connecting');
    let failures = 0;
    let sawOutage = false;
    let first = true;
    while (!this.finished) {
      // Uncertain (first request, or right after a failure): ask without waiting, so a
      // server that is back is noticed at once instead of after a full long poll.
      // While streaming cools down, a long poll ends when the next stream attempt is due.
      let waitSecs = first || failures > 0 || this.source.pollPauseMs ? 0 : LONG_POLL_SECS;
      if (waitSecs > 0 && this.canStream) {
        waitSecs = Math.max(1, Math.min(waitSecs, Math.ceil((this.streamRetryAt - Date.now()) / 1000)));
      }
      let snapshots;
      const askedAt = Date.now();
      try {
        snapshots = await this.source.poll(this.seq, waitSecs, this.abort.signal);
      } catch (error) {
        if (this.finished) return;
        if (error instanceof HttpError && error.status === 404) {
          this.finished = true;
          this.report('poll', 'gone', { error: error.message });
          return;
        }
        if (error instanceof HttpError && !error.transient) {
          this.finished = true;
          this.report('poll', 'error', { error: error.message });
          return;
        }
        const delay = error.retryAfterMs ?? backoffMs(failures);
        failures += 1;
        sawOutage = true;
        this.report('poll', 'unreachable', { retryAt: Date.now() + delay });
        await this.sleep(delay);
        first = false;
        continue;
      }
      if (this.finished) return;
      failures = 0;
      this.report('poll', 'live');
      const nothingNew = snapshots.every(
        (s) => !(Number.isInteger(s?.seq) && s.seq > this.seq) && !isTerminal(s?.status),
      );
      for (const snapshot of snapshots) this.deliver(snapshot);
      this.handlers.onSynced?.();
      if (this.finished) return;
      if (this.canStream) {
        if (afterStream && first && !sawOutage) {
          // The server answers but its stream failed: something on the way (a proxy that
          // buffers, a subscriber limit) is in the way. Poll for a while before retrying.
          this.streamCooldownMs = Math.min(
            STREAM_COOLDOWN_MAX_MS,
            Math.max(STREAM_COOLDOWN_MIN_MS, this.streamCooldownMs * 2),
          );
          this.streamRetryAt = Date.now() + this.streamCooldownMs;
        } else if (sawOutage || Date.now() >= this.streamRetryAt) {
          this.streamErrors = 0;
          this.openStream();
          return;
        }
      }
      first = false;
      if (this.source.pollPauseMs) await this.sleep(this.source.pollPauseMs);
      else if (nothingNew) {
        const idleFor = MIN_IDLE_POLL_GAP_MS - (Date.now() - askedAt);
        if (idleFor > 0) await this.sleep(idleFor);
      }
    }
  }

  sleep(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      const self = this;
      function done() {
        clearTimeout(timer);
        if (self.wake === done) self.wake = null;
        resolve();
      }
      this.wake = done;
    });
  }
}

/** Follows one task until it ends. */
export function followTask(taskId, handlers, readToken = null) {
  return new Follower(taskSource(taskId, readToken), handlers).start();
}

/** Follows every task, for as long as the page is open. */
export function followAll(handlers) {
  return new Follower(allSource(), handlers).start();
}
