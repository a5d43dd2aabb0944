//! Black-box tests: a real server on port 0, real HTTP, SSE and WebSocket clients.

mod helpers;
#[path = "../fixtures/pdf.rs"]
mod pdf_fixture;
mod raw;

mod bad_inputs;
mod binary;
mod differential;
mod durability;
mod errors;
mod indexer;
mod indexer_disk_full;
mod indexer_live;
mod limits;
mod observability;
mod openapi;
mod page;
mod poll;
mod promises;
mod quick_lane;
mod redis;
mod relay;
mod security;
mod shutdown;
mod sse;
mod stream_handoff;
mod tls;
mod watch;
mod ws;
