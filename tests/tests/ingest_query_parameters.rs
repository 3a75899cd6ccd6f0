//! Query parameters against the real ingest binary's router on the real stack: lists take the
//! seed's `next_token` / `previous_token`, and every operation of the API description answers
//! 400 (problem+json naming the parameter) for a parameter it does not take.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap fails the test"
)]

mod ingest_common;

use ingest_common::{Ingest, Reply};
use serde_json::json;

fn ids(reply: &Reply) -> Vec<String> {
    reply.body["items"]
        .as_array()
        .unwrap_or_else(|| panic!("a page: {}", reply.body))
        .iter()
        .map(|o| o["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_take_the_seeds_next_token_and_previous_token() {
    // With the booking processor: it writes the orders' rows.
    let ingest = Ingest::start("query_tokens", true).await;
    let admin = ingest.admin().await;
    let event = ingest.event(&admin, "Paging night", 100, 1000).await;
    let (_, token, _) = ingest.user("seed_pager").await;
    let mut created = Vec::new();
    for _ in 0..5 {
        let order = ingest
            .post(
                "/v1/orders",
                Some(&token),
                json!({"event_id": event, "number_slot": 1}),
            )
            .await;
        assert_eq!(order.status, 202, "{}", order.body);
        created.push(order.body["id"].as_str().unwrap().to_owned());
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
    created.reverse(); // newest first
    ingest.orders_listed(&token, 5).await;
    let first = ingest.get("/v1/orders?limit=2", Some(&token)).await;
    let next = first.body["next_token"].as_str().unwrap().to_owned();
    let second = ingest
        .get(
            &format!("/v1/orders?limit=2&next_token={next}"),
            Some(&token),
        )
        .await;
    assert_eq!(ids(&second), created[2..4], "next_token is the page after");
    let previous = second.body["previous_token"].as_str().unwrap().to_owned();
    let back = ingest
        .get(
            &format!("/v1/orders?limit=2&previous_token={previous}"),
            Some(&token),
        )
        .await;
    assert_eq!(ids(&back), ids(&first), "previous_token is the page before");
    // A token under the other direction's name, or two tokens at once, is refused by name.
    let swapped = ingest
        .get(&format!("/v1/orders?previous_token={next}"), Some(&token))
        .await;
    swapped.assert_problem(400);
    assert_eq!(swapped.body["errors"][0]["field"], "previous_token");
    ingest
        .get(
            &format!("/v1/orders?next_token={next}&previous_token={previous}"),
            Some(&token),
        )
        .await
        .assert_problem(400);
    // The catalogue search pages the same way (two events: two pages of one).
    ingest.event(&admin, "Second paging night", 100, 1000).await;
    let events = ingest.get("/v1/tickets?limit=1", None).await;
    let next = events.body["next_token"]
        .as_str()
        .expect("two events and limit=1 leave a second page");
    let after = ingest
        .get(&format!("/v1/tickets?limit=1&next_token={next}"), None)
        .await;
    assert_eq!(after.status, 200, "{}", after.body);
    assert_ne!(ids(&after), ids(&events));
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_refuses_query_parameters_it_does_not_take() {
    let ingest = Ingest::start("query_unknown", false).await;
    let admin = ingest.admin().await;
    let spec = ingest.get("/openapi.json", None).await.body;
    let paths = spec["paths"].as_object().unwrap();
    let mut checked = 0;
    for (path, item) in paths {
        for method in ["get", "put", "post", "delete", "patch"] {
            if item.get(method).is_none() {
                continue;
            }
            let concrete = path.replace("{id}", "0b6f7c1e-9d1a-4c55-8f0e-2f7a3c9b1d11");
            let body = (method != "get" && method != "delete").then(|| json!({}));
            let reply = ingest
                .send(
                    &method.to_uppercase(),
                    &format!("{concrete}?bogus_parameter=1"),
                    Some(&admin),
                    body,
                    &[],
                )
                .await;
            assert_eq!(reply.status, 400, "{method} {path}: {}", reply.body);
            assert_eq!(
                reply.body["errors"][0]["field"], "bogus_parameter",
                "{method} {path}: {}",
                reply.body
            );
            assert_eq!(
                reply.headers.get("content-type").unwrap(),
                "application/problem+json"
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 30,
        "every operation of the description: {checked}"
    );
    // What an operation declares still passes.
    let listed = ingest.get("/v1/users?limit=1", Some(&admin)).await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    ingest.stop().await;
}
