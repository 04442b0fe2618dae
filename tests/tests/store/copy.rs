//! `Store::copy_to` across engines: SQLite to PostgreSQL (the migration an
//! operator runs when a CA grows into replicas) and back.

use crate::cases::{populate, snapshot};
use crate::{Databases, Env, runtime};
use ca_tests::pg::require_postgres;
use std::sync::Arc;

#[test]
fn copy_between_sqlite_and_postgresql_keeps_everything() {
    if !require_postgres() {
        return;
    }
    let sqlite = Arc::new(Databases::sqlite());
    let postgres = Arc::new(Databases::postgres());
    runtime().block_on(async {
        let source_env = Env::fresh(&sqlite);
        let source = populate(&source_env).await;
        let expected = snapshot(&source).await;

        let pg_env = Env::fresh(&postgres);
        let pg = pg_env.open().await;
        let report = source.copy_to(&pg).await.expect("SQLite -> PostgreSQL");
        assert_eq!(report.crl_number, 7);
        assert_eq!(snapshot(&pg).await, expected);
        assert_eq!(
            pg_env
                .scalar("SELECT crl_number FROM crl_state WHERE id = 1")
                .await,
            7
        );

        let back_env = Env::fresh(&sqlite);
        let back = back_env.open().await;
        let report_back = pg.copy_to(&back).await.expect("PostgreSQL -> SQLite");
        assert_eq!(snapshot(&back).await, expected);
        assert_eq!(
            report.tables, report_back.tables,
            "the same digests on both engines"
        );
    });
}
