//! Ingest against real Kafka, a real CQL store, a real registry and the booking processor:
//! register → login → search → book → reserved → pay → the PaymentSubmitted record is in its
//! topic; live streams; idempotent retries; privacy between users; cancelling; pagination.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap fails the test"
)]

mod ingest_common;

use std::time::Duration;

use boxoffice_avro::{BookingCommand, PaymentRequest};
use boxoffice_tests::wait;
use ingest_common::{Ingest, read_events};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_registers_finds_an_event_books_and_pays() {
    let ingest = Ingest::start("ingest_flow", true).await;
    let admin = ingest.admin().await;
    let category = ingest
        .post(
            "/v1/categories",
            Some(&admin),
            json!({"name": "Concerts", "is_free": false}),
        )
        .await;
    assert_eq!(category.status, 201, "{}", category.body);
    let event_id = ingest
        .event(&admin, "Midnight Jazz Quartet", 10, 4500)
        .await;
    let (user_id, token, _) = ingest.user("fan_one").await;

    // Search: by text, price, availability; the event is there.
    let found = ingest
        .get(
            "/v1/tickets?q=jazz&price_min=1000&available=true&free=false",
            Some(&token),
        )
        .await;
    assert_eq!(found.status, 200, "{}", found.body);
    let items = found.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{}", found.body);
    assert_eq!(items[0]["id"], event_id.as_str());
    assert_eq!(
        ingest.get("/v1/tickets?q=polka", None).await.body["items"]
            .as_array()
            .unwrap()
            .len(),
        0
    );

    // Availability stream: the processor publishes the configured capacity.
    let stream = ingest
        .http
        .get(ingest.url(&format!("/v1/tickets/{event_id}/availability/stream")))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let stream_task = tokio::spawn(read_events(stream, Duration::from_secs(60), |events| {
        events.iter().any(|(_, _, data)| data["held"] == 2)
    }));

    // The fan's notification feed.
    let feed = ingest
        .http
        .get(ingest.url("/v1/notifications/stream"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(feed.status(), 200);
    let feed_task = tokio::spawn(read_events(feed, Duration::from_secs(60), |events| {
        events
            .iter()
            .any(|(_, _, data)| data["kind"] == "ORDER_RESERVED")
    }));

    // Book 2 slots and wait for the processor's decision.
    let order = ingest
        .send(
            "POST",
            "/v1/orders?wait=10",
            Some(&token),
            Some(json!({"event_id": event_id, "number_slot": 2})),
            &[],
        )
        .await;
    assert!(matches!(order.status, 200 | 202), "{}", order.body);
    let order_id = order.body["id"].as_str().unwrap().to_owned();
    let reserved = wait::until("the order to be RESERVED", Duration::from_secs(60), || {
        let ingest = &ingest;
        let path = format!("/v1/orders/{order_id}");
        let token = token.clone();
        async move {
            let reply = ingest.get(&path, Some(&token)).await;
            (reply.body["status"] == "RESERVED").then_some(reply.body)
        }
    })
    .await
    .unwrap();
    assert_eq!(reserved["amount_minor"], 9000);
    assert_eq!(reserved["currency"], "EUR");
    assert!(reserved["hold_expires_at"].is_string());

    let notifications = feed_task.await.unwrap();
    let reserved_note = notifications
        .iter()
        .find(|(_, _, d)| d["kind"] == "ORDER_RESERVED")
        .expect("notified");
    assert_eq!(reserved_note.0, "notification");
    assert_eq!(reserved_note.2["order_id"], order_id.as_str());

    let events = stream_task.await.unwrap();
    let last = events.last().unwrap();
    assert_eq!(last.0, "availability");
    assert_eq!(
        (
            last.2["total"].as_i64(),
            last.2["held"].as_i64(),
            last.2["available"].as_i64()
        ),
        (Some(10), Some(2), Some(8))
    );
    // Resuming with Last-Event-ID replays what came after it (sequence 1 was the capacity).
    let resumed = ingest
        .http
        .get(ingest.url(&format!("/v1/tickets/{event_id}/availability/stream")))
        .header("last-event-id", "1")
        .send()
        .await
        .unwrap();
    let replayed = read_events(resumed, Duration::from_secs(5), |events| !events.is_empty()).await;
    assert_eq!(
        replayed.first().map(|e| e.1.as_str()),
        Some("2"),
        "{replayed:?}"
    );
    assert_eq!(replayed[0].2["held"], 2);

    let detail = ingest.get(&format!("/v1/tickets/{event_id}"), None).await;
    assert_eq!(
        detail.body["availability"]["available"], 8,
        "{}",
        detail.body
    );

    // Pay: wrong price refused, right price submitted to payments.requests.
    let pay = |price: i64| json!({"order_id": order_id, "price": price, "payment_method": "tok_sandbox_visa"});
    ingest
        .post("/v1/payments", Some(&token), pay(100))
        .await
        .assert_problem(422);
    let paid = ingest.post("/v1/payments", Some(&token), pay(9000)).await;
    assert_eq!(paid.status, 202, "{}", paid.body);
    let payment_id = paid.body["id"].as_str().unwrap().to_owned();
    assert_eq!(payment_id, boxoffice_avro::ids::payment_id(&order_id));
    let mut reader = ingest
        .pipeline
        .reader(&ingest.pipeline.topics.payments)
        .unwrap();
    let requests: Vec<PaymentRequest> = reader
        .read_group_until(Duration::from_secs(60), |records: &[PaymentRequest]| {
            records
                .iter()
                .any(|r| matches!(r, PaymentRequest::PaymentSubmitted(_)))
        })
        .await
        .unwrap();
    let submitted = requests
        .iter()
        .find_map(|r| match r {
            PaymentRequest::PaymentSubmitted(s) => Some(s.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(submitted.payment_id, payment_id);
    assert_eq!(submitted.order_id, order_id);
    assert_eq!(submitted.user_id, user_id);
    assert_eq!(
        (submitted.amount_minor, submitted.currency.as_str()),
        (9000, "EUR")
    );
    assert_eq!(submitted.payment_method_token, "tok_sandbox_visa");
    let payment = ingest
        .get(&format!("/v1/payments/{payment_id}"), Some(&token))
        .await;
    assert_eq!(payment.status, 200, "{}", payment.body);
    let listed = ingest.get("/v1/payments", Some(&token)).await;
    assert_eq!(
        listed.body["items"][0]["id"],
        payment_id.as_str(),
        "{}",
        listed.body
    );

    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_idempotent_orders_are_private_and_cancellable() {
    let ingest = Ingest::start("ingest_privacy", true).await;
    let admin = ingest.admin().await;
    let event_id = ingest.event(&admin, "Chamber Night", 5, 2000).await;
    let (_, alice, _) = ingest.user("alice_e2e").await;
    let (_, bob, _) = ingest.user("bob_e2e").await;

    let body = json!({"event_id": event_id, "number_slot": 1});
    let key = [("idempotency-key", "alice-checkout-1")];
    let first = ingest
        .send("POST", "/v1/orders", Some(&alice), Some(body.clone()), &key)
        .await;
    let second = ingest
        .send("POST", "/v1/orders", Some(&alice), Some(body.clone()), &key)
        .await;
    assert_eq!(first.status, 202, "{}", first.body);
    assert!(matches!(second.status, 200 | 202), "{}", second.body);
    assert_eq!(first.body["id"], second.body["id"]);
    // The same key from another user is another order.
    let bobs = ingest
        .send("POST", "/v1/orders", Some(&bob), Some(body.clone()), &key)
        .await;
    assert_ne!(bobs.body["id"], first.body["id"]);
    // The same key with another body names another order, which the booking processor
    // rejects (nothing is read before the 202, so no synchronous 422).
    let reused = ingest
        .send(
            "POST",
            "/v1/orders",
            Some(&alice),
            Some(json!({"event_id": event_id, "number_slot": 2})),
            &key,
        )
        .await;
    assert_eq!(reused.status, 202, "{}", reused.body);
    assert_ne!(reused.body["id"], first.body["id"]);
    let reused_path = format!("/v1/orders/{}", reused.body["id"].as_str().unwrap());
    let rejected = wait::until("the reused key rejected", Duration::from_secs(60), || {
        let (ingest, path, alice) = (&ingest, reused_path.clone(), alice.clone());
        async move {
            let reply = ingest.get(&path, Some(&alice)).await;
            (reply.body["status"] == "REJECTED").then_some(reply)
        }
    })
    .await
    .unwrap();
    assert_eq!(
        rejected.body["reason"], "IDEMPOTENCY_KEY_REUSED",
        "{}",
        rejected.body
    );
    let order_id = first.body["id"].as_str().unwrap().to_owned();
    // One listing row per order: the first (retried) and the rejected one.
    let listed = ingest.orders_listed(&alice, 2).await;
    let listed_ids: Vec<&str> = listed.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o["id"].as_str())
        .collect();
    assert!(listed_ids.contains(&order_id.as_str()), "{}", listed.body);

    // Bob cannot see, pay or cancel Alice's order.
    let path = format!("/v1/orders/{order_id}");
    ingest.get(&path, Some(&bob)).await.assert_problem(404);
    ingest
        .post(&format!("{path}/cancel"), Some(&bob), json!({}))
        .await
        .assert_problem(404);
    ingest
        .post(
            "/v1/payments",
            Some(&bob),
            json!({"order_id": order_id, "price": 2000, "payment_method": "tok"}),
        )
        .await
        .assert_problem(404);
    let bob_stream = ingest
        .http
        .get(ingest.url(&format!("{path}/stream")))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(bob_stream.status(), 404);

    // Alice follows her order and cancels it.
    wait::until("RESERVED", Duration::from_secs(60), || {
        let (ingest, path, alice) = (&ingest, path.clone(), alice.clone());
        async move { (ingest.get(&path, Some(&alice)).await.body["status"] == "RESERVED").then_some(()) }
    })
    .await
    .unwrap();
    let stream = ingest
        .http
        .get(ingest.url(&format!("{path}/stream")))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let follow = tokio::spawn(read_events(stream, Duration::from_secs(60), |events| {
        events
            .iter()
            .any(|(_, _, data)| data["status"] == "CANCELLED")
    }));
    let cancel = ingest
        .post(&format!("{path}/cancel"), Some(&alice), json!({}))
        .await;
    assert_eq!(cancel.status, 202, "{}", cancel.body);
    let events = follow.await.unwrap();
    assert_eq!(
        events.first().map(|e| e.2["status"].clone()),
        Some(json!("RESERVED")),
        "{events:?}"
    );
    assert_eq!(
        events.last().map(|e| e.2["status"].clone()),
        Some(json!("CANCELLED")),
        "{events:?}"
    );
    // The processor publishes its decision before it stores the state ingest reads: wait for
    // the stored status, then a second cancel is refused.
    wait::until("CANCELLED stored", Duration::from_secs(30), || {
        let (ingest, path, alice) = (&ingest, path.clone(), alice.clone());
        async move {
            (ingest.get(&path, Some(&alice)).await.body["status"] == "CANCELLED").then_some(())
        }
    })
    .await
    .unwrap();
    ingest
        .post(&format!("{path}/cancel"), Some(&alice), json!({}))
        .await
        .assert_problem(409);

    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_pages_go_both_ways() {
    // With the booking processor: it writes the orders' rows.
    let ingest = Ingest::start("ingest_pages", true).await;
    let admin = ingest.admin().await;
    let event_id = ingest.event(&admin, "Paging Fest", 100, 100).await;
    let (_, token, _) = ingest.user("pager").await;
    let mut created = Vec::new();
    for _ in 0..7 {
        let reply = ingest
            .post(
                "/v1/orders",
                Some(&token),
                json!({"event_id": event_id, "number_slot": 1}),
            )
            .await;
        assert_eq!(reply.status, 202, "{}", reply.body);
        created.push(reply.body["id"].as_str().unwrap().to_owned());
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    created.reverse(); // newest first
    ingest.orders_listed(&token, 7).await;
    let ids = |reply: &ingest_common::Reply| -> Vec<String> {
        reply.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let p1 = ingest.get("/v1/orders?limit=3", Some(&token)).await;
    assert!(p1.body["previous_token"].is_null());
    let p2 = ingest
        .get(
            &format!(
                "/v1/orders?limit=3&page_token={}",
                p1.body["next_token"].as_str().unwrap()
            ),
            Some(&token),
        )
        .await;
    let p3 = ingest
        .get(
            &format!(
                "/v1/orders?limit=3&page_token={}",
                p2.body["next_token"].as_str().unwrap()
            ),
            Some(&token),
        )
        .await;
    assert!(p3.body["next_token"].is_null(), "{}", p3.body);
    let all: Vec<String> = [ids(&p1), ids(&p2), ids(&p3)].concat();
    assert_eq!(all, created);
    let back = ingest
        .get(
            &format!(
                "/v1/orders?limit=3&page_token={}",
                p3.body["previous_token"].as_str().unwrap()
            ),
            Some(&token),
        )
        .await;
    assert_eq!(ids(&back), ids(&p2));
    let first = ingest
        .get(
            &format!(
                "/v1/orders?limit=3&page_token={}",
                back.body["previous_token"].as_str().unwrap()
            ),
            Some(&token),
        )
        .await;
    assert_eq!(ids(&first), ids(&p1));
    assert!(first.body["previous_token"].is_null(), "{}", first.body);
    // Someone else's token does not open Alice's list.
    let (_, other, _) = ingest.user("other_pager").await;
    ingest
        .get(
            &format!(
                "/v1/orders?page_token={}",
                p1.body["next_token"].as_str().unwrap()
            ),
            Some(&other),
        )
        .await
        .assert_problem(400);
    // Users listing (admin) pages too.
    let users = ingest.get("/v1/users?limit=1", Some(&admin)).await;
    assert_eq!(users.body["items"].as_array().unwrap().len(), 1);
    let next = ingest
        .get(
            &format!(
                "/v1/users?limit=1&page_token={}",
                users.body["next_token"].as_str().unwrap()
            ),
            Some(&admin),
        )
        .await;
    assert_eq!(next.status, 200);
    assert_ne!(next.body["items"][0]["id"], users.body["items"][0]["id"]);
    ingest.stop().await;
}

/// Issue 13, finding 4: a script could hold a whole sale (no per-account cap by default, 100
/// slots per order, 10-minute holds). An event created without limits gets a flash sale's:
/// written into the event itself (its answer and its `EventUpserted` record), and the booking
/// processor enforces them: more than 6 slots in one order, or in all for one account, is
/// rejected with its reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_events_get_a_flash_sales_limits() {
    let ingest = Ingest::start("flash_sale_limits", true).await;
    let admin = ingest.admin().await;
    let created = ingest
        .post(
            "/v1/tickets",
            Some(&admin),
            json!({"name": "Hot sale", "description": "Limits left out", "venue": "Arena",
                   "starts_at": "2031-06-01T20:00:00Z", "price_minor": 9000, "currency": "EUR",
                   "capacity": 1000, "sale_starts_at": "2020-01-01T00:00:00Z",
                   "sale_ends_at": "2031-06-01T18:00:00Z"}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(created.body["max_per_order"], 6, "{}", created.body);
    assert_eq!(created.body["max_per_user"], 6);
    assert_eq!(created.body["hold_seconds"], 300);
    let event_id = created.body["id"].as_str().unwrap().to_owned();
    let upserted = |c: &BookingCommand| match c {
        BookingCommand::EventUpserted(e) if e.event_id == event_id => Some(e.clone()),
        _ => None,
    };
    let commands = ingest
        .pipeline
        .reader(&ingest.pipeline.topics.commands)
        .unwrap()
        .read_group_until(Duration::from_secs(30), |seen: &[BookingCommand]| {
            seen.iter().any(|c| upserted(c).is_some())
        })
        .await
        .unwrap();
    let record = commands.iter().find_map(upserted).unwrap();
    assert_eq!(
        (
            record.max_per_order,
            record.max_per_user,
            record.hold_seconds
        ),
        (6, 6, 300),
        "the limits travel in the event itself"
    );

    let (_, token, _) = ingest.user("limited_fan").await;
    let decide = |slots: i64| {
        let (ingest, token, event_id) = (&ingest, token.clone(), event_id.clone());
        async move {
            let order = ingest
                .send(
                    "POST",
                    "/v1/orders?wait=10",
                    Some(&token),
                    Some(json!({"event_id": event_id, "number_slot": slots})),
                    &[],
                )
                .await;
            assert!(matches!(order.status, 200 | 202), "{}", order.body);
            let path = format!("/v1/orders/{}", order.body["id"].as_str().unwrap());
            wait::until("a decision", Duration::from_secs(60), || {
                let (path, token) = (path.clone(), token.clone());
                async move {
                    let reply = ingest.get(&path, Some(&token)).await;
                    (reply.body["status"] != "PENDING").then_some(reply.body)
                }
            })
            .await
            .unwrap()
        }
    };
    let too_big = decide(7).await;
    assert_eq!(too_big["status"], "REJECTED", "{too_big}");
    let first = decide(4).await;
    assert_eq!(first["status"], "RESERVED", "{first}");
    let over_account = decide(4).await;
    assert_eq!(over_account["status"], "REJECTED", "{over_account}");
    let within = decide(2).await;
    assert_eq!(within["status"], "RESERVED", "{within}");
    ingest.stop().await;
}
