//! The chaos suite, short: on a private stack of its own, one flash sale per fault (the CQL
//! store, the Kafka broker, the booking processor, the payment processor, the notifier, and the
//! store with the booking processor), each SIGKILLed a second into the sale and started again
//! (two seconds later; the broker thirty, longer than every service's retry budget: ingest must
//! answer 503 with `Retry-After` meanwhile and every consumer must resume by itself);
//! after each, the checks of `boxoffice_tests::chaos::check` hold, and at least one of the two
//! store runs shows the store really lost writes and the system repaired them (a kill that
//! lands just after the store synced loses nothing; the deterministic loss tests are
//! `booking_recovery` and `store_loss`). The long mode is the `chaos` binary.

use std::time::Duration;

use boxoffice_tests::chaos::sale::SaleConfig;
use boxoffice_tests::chaos::{Fault, RunConfig, Suite};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_fault_during_a_flash_sale_loses_nothing_and_never_oversells() {
    let mut suite = Suite::start("chaos_short", 24, "log")
        .await
        .expect("the chaos suite's private stack and services start");
    let config = RunConfig {
        capacity: 120,
        sale: SaleConfig {
            requests: 360,
            rate: 120,
            concurrency: 32,
            give_up_after: Duration::from_secs(180),
        },
        fault_at: Duration::from_secs(1),
        down_for: Duration::from_secs(2),
        broker_down_for: Duration::from_secs(30),
    };
    let mut failed = Vec::new();
    let mut loss_seen = Vec::new();
    for fault in Fault::ALL {
        let report = suite.run(fault, config).await.expect("the run completes");
        eprintln!("chaos: {}", report.summary());
        if !report.ok() {
            failed.push(report.summary());
        }
        if fault.kills_store() {
            loss_seen.push(report.loss_observed);
        }
    }
    assert!(
        failed.is_empty(),
        "chaos runs failed:\n{}",
        failed.join("\n")
    );
    assert!(
        loss_seen.contains(&true),
        "no store run saw the store lose writes (the repair path went untested): {loss_seen:?}"
    );
}
