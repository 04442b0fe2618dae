//! End-to-end tests: the real `ca-server` and `ca-client` binaries (and, in
//! later modules, real nginx, PostgreSQL and HAProxy) on 127.0.0.1.
//! One test binary; each test boots its own server in a temporary directory.

mod bootstrap;
mod concurrency;
mod crl;
mod install;
mod puppet;
mod rejections;
mod renewal;
mod retry;
mod revocation;
mod store_pg;
mod systemd_examples;
