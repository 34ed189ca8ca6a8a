//! helixctl end to end on a scratch MariaDB/MySQL database (`HELIX_TEST_MYSQL_URL`, default
//! `mysql://root@127.0.0.1:3306`).

mod support;

use helix_store::conformance::ScratchMysql;
use support::Helixctl;

#[tokio::test]
async fn the_whole_scenario_runs_on_mariadb() {
    let database = ScratchMysql::create().await;
    support::scenario(database.url().as_str()).await;
    database.drop_database().await;
}

#[tokio::test]
async fn a_password_in_the_database_url_is_never_printed() {
    let database = ScratchMysql::create().await;
    let mut url = database.url().clone();
    // A wrong password: the connection is refused, and the message names the database
    // without the password.
    url.set_username("helixctl_nobody").expect("username");
    url.set_password(Some("hunter2-secret")).expect("password");
    let run = Helixctl::new(url.as_str()).run(&["status"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(!run.stderr.contains("hunter2-secret") && !run.stdout.contains("hunter2-secret"), "{run:?}");
    assert!(run.stderr.contains("***") && run.stderr.contains("HELIX_DATABASE_URL"), "{run:?}");
    database.drop_database().await;
}
