//! Black-box tests against a server started on port 0.

mod stream_handoff;
