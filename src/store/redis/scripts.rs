//! The Lua scripts that change tasks in Redis. Each runs atomically, so checking a task's
//! `seq`, storing the new snapshot, appending it to the task's stream and publishing it
//! to every node happen as one step: no node ever sees a `seq` that another change took.
//!
//! Keys of one task: a hash (`seq`, `json`, `done`) and a stream of its newest events,
//! each with the stream id `<seq>-0`, so that the events after a given `seq` are one
//! `XRANGE`. Every script first checks the epoch key (see [`super::RedisStore`]): a node
//! writes only to the Redis whose data it has reconciled with its own.

use redis::Script;

/// Appends one change. KEYS: task hash, task stream, task index, epoch, lease.
/// ARGV: epoch, base seq (`""`: create), new seq, json, terminal (`1`/`0`), history
/// length, retention (ms), created at (ms, the index score), task id, channel, lease
/// owner (`""`: none), lease time (ms).
/// Answers `{"ok"}`, `{"conflict", json}`, `{"exists"}`, `{"missing"}` or `{"epoch"}`.
pub const APPEND: &str = r#"
if redis.call('GET', KEYS[4]) ~= ARGV[1] then return {'epoch'} end
local cur = redis.call('HMGET', KEYS[1], 'seq', 'json', 'done')
if ARGV[2] == '' then
  if cur[1] then return {'exists'} end
  redis.call('DEL', KEYS[2])
else
  if not cur[1] then return {'missing'} end
  if cur[1] ~= ARGV[2] or cur[3] == '1' then return {'conflict', cur[2]} end
end
redis.call('HSET', KEYS[1], 'seq', ARGV[3], 'json', ARGV[4], 'done', ARGV[5])
if ARGV[5] == '1' then
  redis.call('DEL', KEYS[2])
  redis.call('XADD', KEYS[2], ARGV[3] .. '-0', 'j', ARGV[4])
  redis.call('PEXPIRE', KEYS[1], ARGV[7])
  redis.call('PEXPIRE', KEYS[2], ARGV[7])
  redis.call('DEL', KEYS[5])
else
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], ARGV[3] .. '-0', 'j', ARGV[4])
end
if ARGV[2] == '' then redis.call('ZADD', KEYS[3], ARGV[8], ARGV[9]) end
if ARGV[11] ~= '' then redis.call('SET', KEYS[5], ARGV[11], 'PX', ARGV[12]) end
redis.call('PUBLISH', ARGV[10], ARGV[4])
return {'ok'}
"#;

/// Gives a task back to a Redis that lost its data, unless some node did already.
/// KEYS: task hash, task stream, task index, epoch. ARGV: epoch, seq, json, terminal,
/// retention (ms), created at (ms), task id, channel. Answers `ok`, `exists` or `epoch`.
pub const RESTORE: &str = r#"
if redis.call('GET', KEYS[4]) ~= ARGV[1] then return 'epoch' end
if redis.call('EXISTS', KEYS[1]) == 1 then return 'exists' end
redis.call('HSET', KEYS[1], 'seq', ARGV[2], 'json', ARGV[3], 'done', ARGV[4])
redis.call('DEL', KEYS[2])
redis.call('XADD', KEYS[2], ARGV[2] .. '-0', 'j', ARGV[3])
if ARGV[4] == '1' then
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
end
redis.call('ZADD', KEYS[3], ARGV[6], ARGV[7])
redis.call('PUBLISH', ARGV[8], ARGV[3])
return 'ok'
"#;

/// The scripts, hashed once (`EVALSHA`, loaded again by the client when Redis lost them).
pub struct Scripts {
    pub append: Script,
    pub restore: Script,
}

impl Scripts {
    pub fn new() -> Scripts {
        Scripts {
            append: Script::new(APPEND),
            restore: Script::new(RESTORE),
        }
    }
}
