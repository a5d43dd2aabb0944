//! Black-box tests: a real server on port 0, real HTTP, SSE and WebSocket clients.

mod helpers;

mod binary;
mod durability;
mod errors;
mod poll;
mod shutdown;
mod sse;
mod ws;
