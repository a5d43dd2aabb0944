//! The one integration-test binary: black-box tests against a server started in-process
//! on port 0. Each module covers one surface.

mod indexer;
