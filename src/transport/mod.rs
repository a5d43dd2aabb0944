//! Every layer that speaks bytes on a socket itself, beside hyper: the quick lane that
//! answers plain polls before hyper, the hand-off of event streams from hyper, the relay's
//! direct writers of SSE and WebSocket streams and their framing, and the WebSocket wire
//! format. `--fast-paths off` leaves all of it out but the WebSocket frame code.

pub mod direct;
pub mod handoff;
pub mod quick;
pub mod sse;
pub mod ws;
