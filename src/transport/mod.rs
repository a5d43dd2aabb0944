//! Every layer that speaks bytes on a socket itself, beside hyper: the quick lane that
//! answers plain polls before hyper, the hand-off of event streams from hyper, the relay's
//! direct writers of SSE and WebSocket streams and their framing, and the WebSocket wire
//! format. `--fast-paths off` leaves all of it out but the WebSocket frame code.

pub mod direct;
pub mod handoff;
pub mod quick;
pub mod sse;
pub mod ws;

/// In a request's extensions: its connection is served by hyper alone (HTTPS,
/// [`crate::tls`]), so no fast path can take its stream over; handlers answer as with
/// `--fast-paths off`.
#[derive(Debug, Clone, Copy)]
pub struct HyperOnly;
