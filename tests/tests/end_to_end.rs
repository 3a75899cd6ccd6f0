//! The whole system, end to end: ingest (HTTP), the booking processor, the payment processor
//! (sandbox gateway), the notifier and a real SMTP server (`scripts/smtp-sink`), on real Kafka,
//! a real CQL store and a real registry. Every step is driven through the public HTTP API and
//! checked where a fan would see it: the order, the payment, the event's availability and the
//! emails that arrive.
//!
//! - book → "reserved" email with the hold deadline → pay `tok_success` → "confirmed" email
//!   with the ticket ids;
//! - a declined card → "cancelled" email, and the slots are free again;
//! - cancelling a confirmed order → refund, "cancelled" and "refunded" emails;
//! - a payment that arrives after the hold expired (`tok_slow`): re-allocated while slots are
//!   free ("late payment" confirmation), refunded when another fan took them meanwhile;
//! - one fan also registered a webhook endpoint through the API: the same steps arrive as
//!   signed webhooks (checked with the secret the API generated), once each, in order.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap fails the test"
)]

mod ingest_common;
mod notifier_common;

use std::time::Duration;

use boxoffice_avro::ids;
use boxoffice_sinks::notify::Channel;
use boxoffice_tests::wait;
use ingest_common::Ingest;
use notifier_common::{Email, RunningNotifier, SmtpSink, WebhookReceiver};
use serde_json::{Value, json};

/// How long the sandbox takes for `tok_slow`: longer than the late events' 30 s hold (the
/// shortest the API allows), so those payments land after the hold expired, with a few seconds
/// for another fan to take the released slots first (their hold then outlasts the refund).
const SLOW_PAYMENT: Duration = Duration::from_secs(38);
const LATE_HOLD_SECONDS: i64 = 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fans_book_pay_cancel_and_hear_about_every_step() {
    let ingest = Ingest::start("end_to_end", true).await;
    let pipeline = &ingest.pipeline;
    let mut payment_settings = pipeline.payment_settings();
    payment_settings.sandbox_slow = SLOW_PAYMENT;
    let payments = pipeline
        .start_payment_processor_with(payment_settings)
        .await
        .unwrap();
    let smtp = SmtpSink::start();
    let receiver = WebhookReceiver::start().await;
    let notifier = RunningNotifier::start(
        pipeline,
        notifier_common::settings(pipeline, &Channel::ALL, smtp.port),
    )
    .await;
    let admin = ingest.admin().await;
    let arena = ingest.event(&admin, "Harbour Arena", 100, 4500).await;
    let late_free = late_event(&ingest, &admin, "Late Show Free", 10).await;
    let late_sold = late_event(&ingest, &admin, "Late Show Sold", 2).await;
    let fan = Fan::new(&ingest, "ada").await;
    // The first fan also wants webhooks: an endpoint registered through the API, whose
    // generated secret the receiver checks every signature with.
    let endpoint = ingest
        .post(
            "/v1/webhooks",
            Some(&fan.token),
            json!({"url": receiver.url("ada"), "description": "my app"}),
        )
        .await;
    assert_eq!(endpoint.status, 201, "{}", endpoint.body);
    receiver.endpoint_secret("ada", endpoint.body["secret"].as_str().unwrap());
    let declined = Fan::new(&ingest, "bob").await;
    let late_a = Fan::new(&ingest, "cleo").await;
    let late_b = Fan::new(&ingest, "dan").await;
    let latecomer = Fan::new(&ingest, "eve").await;

    // 1. Book, reserved email, pay, confirmed email with the tickets.
    let order = fan_books(&ingest, &fan, &arena, 2).await;
    let reserved = smtp_wait(&smtp, &fan, "Reserved:", 1).await;
    assert!(
        reserved[0].subject.contains("Harbour Arena") && reserved[0].subject.contains("pay by"),
        "{reserved:?}"
    );
    assert!(
        reserved[0].body.contains("2 slots") && reserved[0].body.contains("90.00 EUR"),
        "{}",
        reserved[0].body
    );
    let payment_id = fan.pays(&ingest, &order, 9000, "tok_success").await;
    let confirmed = fan.order_reaches(&ingest, &order, "CONFIRMED").await;
    assert_eq!(confirmed["late_payment"], false, "{confirmed}");
    let confirmed_email = smtp_wait(&smtp, &fan, "Confirmed:", 1).await;
    for ticket in ids::ticket_ids(&order, 2) {
        assert!(
            confirmed_email[0].body.contains(&ticket),
            "ticket {ticket} missing from {}",
            confirmed_email[0].body
        );
    }
    let payment = fan.payment_reaches(&ingest, &payment_id, "CAPTURED").await;
    assert_eq!(payment["amount_minor"], 9000, "{payment}");

    // 2. A declined card: cancelled email, the slots are free again.
    let declined_order = fan_books(&ingest, &declined, &arena, 3).await;
    smtp_wait(&smtp, &declined, "Reserved:", 1).await;
    declined
        .pays(&ingest, &declined_order, 13500, "tok_declined")
        .await;
    let cancelled = declined
        .order_reaches(&ingest, &declined_order, "CANCELLED")
        .await;
    assert_eq!(cancelled["reason"], "PAYMENT_FAILED", "{cancelled}");
    let cancelled_email = smtp_wait(&smtp, &declined, "Cancelled:", 1).await;
    assert!(
        cancelled_email[0].body.contains("the payment failed"),
        "{}",
        cancelled_email[0].body
    );
    availability_reaches(&ingest, &arena, 98, 0, 2).await;

    // 3. Cancelling a confirmed order: refund and emails, slots back on sale.
    let cancel = ingest
        .post(
            &format!("/v1/orders/{order}/cancel"),
            Some(&fan.token),
            json!({}),
        )
        .await;
    assert!(matches!(cancel.status, 200 | 202), "{}", cancel.body);
    fan.order_reaches(&ingest, &order, "CANCELLED").await;
    fan.payment_reaches(&ingest, &payment_id, "REFUNDED").await;
    let cancelled_email = smtp_wait(&smtp, &fan, "Cancelled:", 1).await;
    assert!(
        cancelled_email[0]
            .body
            .contains("The payment will be refunded"),
        "{}",
        cancelled_email[0].body
    );
    let refunded_email = smtp_wait(&smtp, &fan, "Refunded:", 1).await;
    assert!(
        refunded_email[0].body.contains("90.00 EUR")
            && refunded_email[0].subject.contains("Harbour Arena"),
        "{:?}",
        refunded_email[0]
    );
    availability_reaches(&ingest, &arena, 100, 0, 0).await;

    // 4. Late payments: the hold (30 s) expires before the slow payment lands (38 s). One
    // branch after the other: the sandbox answers a slow charge inline, so a second one on the
    // same partition would hold up the first one's refund.
    // 4a. Another fan took the released slots meanwhile: refunded, with an email saying why.
    let late_sold_order = fan_books(&ingest, &late_b, &late_sold, 2).await;
    late_b
        .pays(&ingest, &late_sold_order, 9000, "tok_slow")
        .await;
    late_b
        .order_reaches(&ingest, &late_sold_order, "EXPIRED")
        .await;
    smtp_wait(&smtp, &late_b, "Hold expired:", 1).await;
    let taken = fan_books(&ingest, &latecomer, &late_sold, 2).await;
    late_b
        .payment_reaches(&ingest, &ids::payment_id(&late_sold_order), "REFUNDED")
        .await;
    let refunded = smtp_wait(&smtp, &late_b, "Refunded:", 1).await;
    assert!(
        refunded[0].body.contains("after the hold expired")
            && refunded[0].subject.contains("Late Show Sold"),
        "{:?}",
        refunded[0]
    );
    let still_expired = late_b.order(&ingest, &late_sold_order).await;
    assert_eq!(still_expired["status"], "EXPIRED", "{still_expired}");
    // The other fan's hold was never touched.
    let kept = latecomer.order(&ingest, &taken).await;
    assert_eq!(kept["status"], "RESERVED", "{kept}");
    availability_reaches(&ingest, &late_sold, 0, 2, 0).await;
    // 4b. Slots still free: re-allocated and confirmed, marked late.
    let late_free_order = fan_books(&ingest, &late_a, &late_free, 2).await;
    late_a
        .pays(&ingest, &late_free_order, 9000, "tok_slow")
        .await;
    late_a
        .order_reaches(&ingest, &late_free_order, "EXPIRED")
        .await;
    smtp_wait(&smtp, &late_a, "Hold expired:", 1).await;
    let reallocated = late_a
        .order_reaches(&ingest, &late_free_order, "CONFIRMED")
        .await;
    assert_eq!(reallocated["late_payment"], true, "{reallocated}");
    let late_confirmed = smtp_wait(&smtp, &late_a, "Confirmed:", 1).await;
    assert!(
        late_confirmed[0]
            .body
            .contains("arrived after the hold expired"),
        "{}",
        late_confirmed[0].body
    );
    availability_reaches(&ingest, &late_free, 8, 0, 2).await;
    // By now (more than 30 s later) the other fan's unpaid hold has run out too.
    smtp_wait(&smtp, &latecomer, "Hold expired:", 1).await;

    // Exactly the emails each step calls for, each once, in order per order.
    let subjects = |fan: &Fan| -> Vec<String> {
        emails_to(&smtp, fan)
            .iter()
            .map(|e| e.subject.split(':').next().unwrap_or_default().to_owned())
            .collect()
    };
    // Registration's verification link came first (the harness then verified the address).
    let verify = "Confirm your email address";
    assert_eq!(
        subjects(&fan),
        [verify, "Reserved", "Confirmed", "Cancelled", "Refunded"]
    );
    assert_eq!(subjects(&declined), [verify, "Reserved", "Cancelled"]);
    assert_eq!(
        subjects(&late_a),
        [verify, "Reserved", "Hold expired", "Confirmed"]
    );
    assert_eq!(
        subjects(&late_b),
        [verify, "Reserved", "Hold expired", "Refunded"]
    );
    assert_eq!(subjects(&latecomer), [verify, "Reserved", "Hold expired"]);
    // The same steps as signed webhooks, each once, in order.
    let hooks = wait::until(
        "4 webhooks for the fan",
        Duration::from_secs(60),
        || async {
            let received = receiver.received();
            (received.len() >= 4).then_some(received)
        },
    )
    .await
    .unwrap();
    let types: Vec<&str> = hooks
        .iter()
        .filter_map(|h| h.body["type"].as_str())
        .collect();
    assert_eq!(
        types,
        [
            "ORDER_RESERVED",
            "ORDER_CONFIRMED",
            "ORDER_CANCELLED",
            "ORDER_REFUNDED"
        ]
    );
    assert!(hooks.iter().all(|h| h.endpoint == "ada"));
    assert_eq!(receiver.bad_signatures(), 0);
    // Nothing charged twice.
    assert_eq!(payments.gateway.replays(), 0);
    // The in-app list holds the same steps for the fan (its own consumer group: it may come
    // after the emails and webhooks).
    let kinds = |body: &Value| -> usize {
        body["items"].as_array().map_or(0, |items| {
            items.iter().filter(|n| n["kind"].is_string()).count()
        })
    };
    let listed = wait::until(
        "the fan's 4 in-app notifications",
        Duration::from_secs(60),
        || {
            let (ingest, token) = (&ingest, &fan.token);
            async move {
                let listed = ingest.get("/v1/notifications", Some(token)).await;
                (kinds(&listed.body) >= 4).then_some(listed.body)
            }
        },
    )
    .await;
    let last = ingest.get("/v1/notifications", Some(&fan.token)).await;
    assert!(listed.is_ok(), "the fan's notifications: {}", last.body);
    assert_eq!(
        kinds(&last.body),
        4,
        "the fan's notifications: {}",
        last.body
    );

    notifier.stop().await.unwrap();
    payments.stop().await.unwrap();
    ingest.stop().await;
}

/// A registered, signed-in fan.
struct Fan {
    email: String,
    token: String,
}

impl Fan {
    async fn new(ingest: &Ingest, name: &str) -> Fan {
        let (_, token, _) = ingest.user(name).await;
        Fan {
            email: format!("{name}@example.com"),
            token,
        }
    }

    async fn order(&self, ingest: &Ingest, order_id: &str) -> Value {
        let reply = ingest
            .get(&format!("/v1/orders/{order_id}"), Some(&self.token))
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.body
    }

    async fn order_reaches(&self, ingest: &Ingest, order_id: &str, status: &str) -> Value {
        let what = format!("order {order_id} to be {status}");
        let reached = wait::until(&what, Duration::from_secs(90), || async move {
            let order = self.order(ingest, order_id).await;
            (order["status"] == status).then_some(order)
        })
        .await;
        match reached {
            Ok(order) => order,
            Err(e) => panic!("{e:#}; the order is {}", self.order(ingest, order_id).await),
        }
    }

    /// Submits a payment for the order; answers the payment id.
    async fn pays(&self, ingest: &Ingest, order_id: &str, price: i64, token: &str) -> String {
        let paid = ingest
            .post(
                "/v1/payments",
                Some(&self.token),
                json!({"order_id": order_id, "price": price, "payment_method": token}),
            )
            .await;
        assert_eq!(paid.status, 202, "{}", paid.body);
        paid.body["id"].as_str().unwrap().to_owned()
    }

    async fn payment_reaches(&self, ingest: &Ingest, payment_id: &str, status: &str) -> Value {
        let what = format!("payment {payment_id} to be {status}");
        let path = format!("/v1/payments/{payment_id}");
        let reached = wait::until(&what, Duration::from_secs(90), || async {
            let reply = ingest.get(&path, Some(&self.token)).await;
            (reply.status == 200 && reply.body["status"] == status).then_some(reply.body)
        })
        .await;
        match reached {
            Ok(payment) => payment,
            Err(e) => panic!(
                "{e:#}; the payment is {}",
                ingest.get(&path, Some(&self.token)).await.body
            ),
        }
    }
}

/// Books `slots` and waits until the order is RESERVED; answers the order id.
async fn fan_books(ingest: &Ingest, fan: &Fan, event_id: &str, slots: i64) -> String {
    let order = ingest
        .send(
            "POST",
            "/v1/orders?wait=10",
            Some(&fan.token),
            Some(json!({"event_id": event_id, "number_slot": slots})),
            &[],
        )
        .await;
    assert!(matches!(order.status, 200 | 202), "{}", order.body);
    let order_id = order.body["id"].as_str().unwrap().to_owned();
    fan.order_reaches(ingest, &order_id, "RESERVED").await;
    order_id
}

/// A paid event (45.00 EUR) with the shortest hold the API allows.
async fn late_event(ingest: &Ingest, admin: &str, name: &str, capacity: i64) -> String {
    let reply = ingest
        .post(
            "/v1/tickets",
            Some(admin),
            json!({"name": name, "description": "Doors close on time", "venue": "Small hall",
                   "starts_at": "2031-06-01T20:00:00Z", "price_minor": 4500, "currency": "EUR",
                   "capacity": capacity, "sale_starts_at": "2020-01-01T00:00:00Z",
                   "sale_ends_at": "2031-06-01T18:00:00Z", "max_per_order": 10,
                   "hold_seconds": LATE_HOLD_SECONDS}),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    reply.body["id"].as_str().unwrap().to_owned()
}

/// The emails addressed to the fan so far, in arrival order.
fn emails_to(smtp: &SmtpSink, fan: &Fan) -> Vec<Email> {
    smtp.messages()
        .into_iter()
        .filter(|e| e.to.contains(&fan.email))
        .collect()
}

/// Waits until `count` emails to the fan have a subject starting with `prefix`; answers them.
async fn smtp_wait(smtp: &SmtpSink, fan: &Fan, prefix: &str, count: usize) -> Vec<Email> {
    let what = format!("{count} email(s) \"{prefix}\" to {}", fan.email);
    let emails = wait::until(&what, Duration::from_secs(90), || async move {
        let matching: Vec<Email> = emails_to(smtp, fan)
            .into_iter()
            .filter(|e| e.subject.starts_with(prefix))
            .collect();
        (matching.len() >= count).then_some(matching)
    })
    .await
    .unwrap();
    assert_eq!(emails.len(), count, "{emails:?}");
    emails
}

/// Waits until the event's availability (as `GET v1/tickets/{id}` shows it) is exactly this.
async fn availability_reaches(
    ingest: &Ingest,
    event_id: &str,
    available: i64,
    held: i64,
    sold: i64,
) {
    let what = format!("event {event_id} at available {available}, held {held}, sold {sold}");
    wait::until(&what, Duration::from_secs(60), || async move {
        let reply = ingest.get(&format!("/v1/tickets/{event_id}"), None).await;
        let a = &reply.body["availability"];
        (a["available"] == available && a["held"] == held && a["sold"] == sold).then_some(())
    })
    .await
    .unwrap();
}
