//! End-to-end tests: the real `ca-server` and `ca-client` binaries (and, in
//! later modules, real nginx, PostgreSQL and HAProxy) on 127.0.0.1.
//! One test binary; each test boots its own server in a temporary directory.

mod bootstrap;
mod concurrency;
mod faults;
mod hostile;
mod lint;
mod rejections;
mod retry;
mod store_pg;
mod throttle;
