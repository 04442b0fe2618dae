//! PostgreSQL stops under a running store: operations fail at once with
//! `StoreError::Down` instead of waiting for the pool, nothing is
//! half-written, and the same `Store` works again once PostgreSQL is back.

use crate::{audit, cert, hash, runtime};
use ca_server::store::{Issuance, Store, StoreError};
use ca_tests::pg::{PgCluster, require_postgres};
use ca_tests::wait_for;
use std::time::Duration;

const NOW: i64 = 1_900_000_000;

#[test]
fn a_stopped_postgresql_fails_fast_and_the_store_recovers_without_reopening() {
    if !require_postgres() {
        return;
    }
    let mut pg = PgCluster::start();
    let url = pg.create_database("ca");
    let rt = runtime();
    let store = rt.block_on(Store::open(&url)).unwrap();
    let watcher = rt.spawn(store.clone().watch_availability());
    let host = "down.example.internal";
    rt.block_on(store.put_psk(
        host,
        &hash("p"),
        &[],
        NOW,
        NOW + 3600,
        &audit("psk_added", host, NOW),
    ))
    .unwrap();
    assert!(store.is_up());

    pg.stop();
    wait_for(
        Duration::from_secs(20),
        "the watcher to see PostgreSQL down",
        || (!store.is_up()).then_some(()),
    );
    // Every operation now fails with Down, without touching the pool.
    let c = cert(1, host, Some(&hash("p")), NOW);
    let a = audit("issued", host, NOW);
    let issuance = Issuance {
        psk_hash: hash("p"),
        now: NOW,
        cert: &c,
        audit: &a,
    };
    rt.block_on(async {
        assert!(matches!(store.health().await, Err(StoreError::Down { .. })));
        assert!(matches!(
            store.get_psk(host).await,
            Err(StoreError::Down { .. })
        ));
        assert!(matches!(
            store.record_issuance(&issuance).await,
            Err(StoreError::Down { .. })
        ));
    });

    pg.restart();
    wait_for(
        Duration::from_secs(20),
        "the watcher to see PostgreSQL back",
        || store.is_up().then_some(()),
    );
    rt.block_on(async {
        store.health().await.unwrap();
        // Nothing was written while it was down; the PSK redeems now.
        assert!(store.get_psk(host).await.unwrap().is_some());
        assert!(store.list_certs(None, None).await.unwrap().is_empty());
        store.record_issuance(&issuance).await.unwrap();
        assert_eq!(store.list_certs(Some(host), None).await.unwrap().len(), 1);
    });
    watcher.abort();
}
