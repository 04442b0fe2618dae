//! End-to-end tests: the real `ca-server` and `ca-client` binaries (and, in
//! later modules, real nginx, PostgreSQL and HAProxy) on 127.0.0.1.
//! One test binary; each test boots its own server in a temporary directory.

mod acme;
mod admin;
mod audit_chain;
mod backup;
mod bootstrap;
mod concurrency;
mod connections;
mod crl;
mod faults;
mod haproxy;
mod hostile;
mod install;
mod install_attacks;
mod lint;
mod ocsp;
mod operability;
mod pkcs11;
mod proxy_protocol;
mod puppet;
mod rejections;
mod renewal;
mod replicas;
mod retry;
mod revocation;
mod store_copy;
mod store_pg;
mod systemd_examples;
mod throttle;
