//! The store on PostgreSQL: a throwaway cluster, the same PSK loop.

use ca_tests::pg::{PgCluster, require_postgres};
use ca_tests::*;

#[test]
fn the_psk_loop_runs_on_postgresql() {
    if !require_postgres() {
        return;
    }
    let pg = PgCluster::start();
    let mut server = CaServer::start_with(pg.server_options("ca"));
    let psk = server.psk_add("pg1.example.internal", &[]);
    let work = tempfile::tempdir().unwrap();
    let psk_file = write_file(work.path(), "psk", &psk);
    run_ok(&mut server.bootstrap_cmd("pg1.example.internal", &psk_file, &work.path().join("tls")));
    assert_eq!(server.certs_of("pg1.example.internal").len(), 1);
    assert_eq!(pg.psql("ca", "SELECT count(*) FROM psks"), "0");
    assert_eq!(
        pg.psql(
            "ca",
            "SELECT count(*) FROM certificates WHERE kind = 'host'"
        ),
        "1"
    );
    server.assert_no_secret_leaks();
}
