//! Black-box tests: each starts the real server on a free loopback port and talks HTTP.

mod page;
