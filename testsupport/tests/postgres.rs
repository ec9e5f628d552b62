//! The PostgreSQL helper starts a real server, survives a kill and restart with its data.

use contrail_testsupport::PostgresServer;

#[test]
fn starts_answers_and_restarts_with_data() {
    let mut pg = PostgresServer::start();
    pg.psql("CREATE TABLE t (x int); INSERT INTO t VALUES (42)")
        .expect("create");
    assert_eq!(pg.psql("SELECT x FROM t").expect("select"), "42");
    pg.stop();
    assert!(pg.psql("SELECT 1").is_err(), "server is down after stop");
    pg.restart();
    assert_eq!(
        pg.psql("SELECT x FROM t").expect("select after restart"),
        "42"
    );
}
