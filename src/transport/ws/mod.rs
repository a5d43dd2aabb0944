//! WebSocket framing (RFC 6455) and the session a WebSocket runs through hyper.

#[cfg(test)]
mod differential;
pub mod frame;
pub mod plain;
