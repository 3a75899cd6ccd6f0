//! Issue 13, findings 8 and 9: accounts prove their email address before they book, passwords
//! are reset by email, and registration answers never tell whether an address or user name has
//! an account. Against the real ingest, booking processor, notifier (email and in-app channels)
//! and an SMTP server: every link is read back from the email a fan would get.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap fails the test"
)]

mod ingest_common;
mod notifier_common;

use std::time::Duration;

use boxoffice_sinks::notify::Channel;
use boxoffice_tests::receivers::{Email, SmtpSink};
use boxoffice_tests::wait;
use ingest_common::{Ingest, PASSWORD};
use notifier_common::RunningNotifier;
use serde_json::{Value, json};

fn registration(email: &str, user_name: &str) -> Value {
    json!({"email": email, "user_name": user_name, "first_name": "Rita", "last_name": "Fan",
           "password": PASSWORD, "mobile_phone": "+49 30 1234567"})
}

/// The `nth` (0-based) email to `to` whose subject starts with `subject`, once it arrived.
async fn email(smtp: &SmtpSink, to: &str, subject: &str, nth: usize) -> Email {
    let what = format!("email {nth} to {to}: {subject}");
    wait::until(&what, Duration::from_secs(60), || {
        let found = smtp
            .messages()
            .into_iter()
            .filter(|m| m.to.contains(to) && m.subject.starts_with(subject))
            .nth(nth);
        async move { found }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {:#?}", smtp.messages()))
}

/// The token an email's link carries (its line `Or send this token to the API: ...`).
fn token_in(email: &Email) -> String {
    email
        .body
        .lines()
        .find_map(|l| l.strip_prefix("Or send this token to the API: "))
        .unwrap_or_else(|| panic!("no token in {email:?}"))
        .trim()
        .to_owned()
}

async fn sign_in(ingest: &Ingest, login: &str, password: &str) -> ingest_common::Reply {
    ingest
        .post(
            "/v1/login",
            None,
            json!({"login": login, "password": password}),
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fan_verifies_by_email_books_and_resets_the_password() {
    let ingest = Ingest::start("accounts", true).await;
    let smtp = SmtpSink::start();
    let notifier = RunningNotifier::start(
        &ingest.pipeline,
        notifier_common::settings(
            &ingest.pipeline,
            &[Channel::Email, Channel::Inapp],
            smtp.port,
        ),
    )
    .await;
    let admin = ingest.admin().await;
    let event = ingest.event(&admin, "Verified night", 100, 1000).await;

    // Registered and signed in, but not verified: no booking.
    let first = ingest
        .post(
            "/v1/register",
            None,
            registration("rita@example.com", "rita"),
        )
        .await;
    assert_eq!(first.status, 202, "{}", first.body);
    let signed_in = sign_in(&ingest, "rita", PASSWORD).await;
    assert_eq!(signed_in.status, 200, "{}", signed_in.body);
    let token = signed_in.body["access_token"].as_str().unwrap().to_owned();
    let book = json!({"event_id": event, "number_slot": 1});
    ingest
        .post("/v1/orders", Some(&token), book.clone())
        .await
        .assert_problem(403);

    // The link from the email verifies the address; refreshed tokens book.
    let verification = email(&smtp, "rita@example.com", "Confirm your email address", 0).await;
    assert!(
        verification
            .body
            .contains("http://localhost:8888/verify-email#token="),
        "{verification:?}"
    );
    let verified = ingest
        .post(
            "/v1/verify-email",
            None,
            json!({"token": token_in(&verification)}),
        )
        .await;
    assert_eq!(verified.status, 200, "{}", verified.body);
    let refreshed = ingest
        .post(
            "/v1/refresh",
            None,
            json!({"refresh_token": signed_in.body["refresh_token"]}),
        )
        .await;
    assert_eq!(refreshed.status, 200, "{}", refreshed.body);
    let token = refreshed.body["access_token"].as_str().unwrap().to_owned();
    let order = ingest.post("/v1/orders", Some(&token), book).await;
    assert_eq!(order.status, 202, "{}", order.body);

    // Registering the address again, or another address with the taken user name: the same
    // answer as the first registration; the address's owner is told by email.
    let again = ingest
        .post(
            "/v1/register",
            None,
            registration("rita@example.com", "rita_two"),
        )
        .await;
    let taken_name = ingest
        .post(
            "/v1/register",
            None,
            registration("other@example.com", "rita"),
        )
        .await;
    for reply in [&again, &taken_name] {
        assert_eq!((reply.status, &reply.body), (first.status, &first.body));
    }
    email(
        &smtp,
        "rita@example.com",
        "Someone tried to register with your email address",
        0,
    )
    .await;
    let not_made = email(
        &smtp,
        "other@example.com",
        "Your registration did not go through",
        0,
    )
    .await;
    assert!(not_made.body.contains("\"rita\" is taken"), "{not_made:?}");

    // A password reset by email: the new password works, the old one and the used link do not.
    let unknown = ingest
        .post(
            "/v1/password-reset",
            None,
            json!({"email": "nobody@example.com"}),
        )
        .await;
    let known = ingest
        .post(
            "/v1/password-reset",
            None,
            json!({"email": "rita@example.com"}),
        )
        .await;
    assert_eq!(known.status, 202, "{}", known.body);
    assert_eq!((unknown.status, &unknown.body), (known.status, &known.body));
    let reset = email(&smtp, "rita@example.com", "Reset your password", 0).await;
    let confirm = json!({"token": token_in(&reset), "password": "a new good password"});
    let changed = ingest
        .post("/v1/password-reset/confirm", None, confirm.clone())
        .await;
    assert_eq!(changed.status, 204, "{}", changed.body);
    ingest
        .post("/v1/password-reset/confirm", None, confirm)
        .await
        .assert_problem(400);
    sign_in(&ingest, "rita", PASSWORD).await.assert_problem(401);
    let renewed = sign_in(&ingest, "rita", "a new good password").await;
    assert_eq!(renewed.status, 200, "{}", renewed.body);
    // The session from before the reset has ended.
    ingest
        .post(
            "/v1/refresh",
            None,
            json!({"refresh_token": refreshed.body["refresh_token"]}),
        )
        .await
        .assert_problem(401);

    // Account emails went by email only: rita's in-app list has her order's news and none of
    // the links (the in-app channel ran on the same records).
    let token = renewed.body["access_token"].as_str().unwrap().to_owned();
    let inapp = wait::until(
        "rita's order notice in-app",
        Duration::from_secs(60),
        || {
            let ingest = &ingest;
            let token = token.clone();
            async move {
                let list = ingest.get("/v1/notifications", Some(&token)).await;
                let items = list.body["items"].as_array().cloned().unwrap_or_default();
                (!items.is_empty()).then_some(items)
            }
        },
    )
    .await
    .unwrap();
    for item in &inapp {
        let kind = item["kind"].as_str().unwrap_or_default();
        assert!(kind.starts_with("ORDER_"), "{item}");
    }
    assert!(
        smtp.messages().iter().all(|m| !m.to.contains("nobody@")),
        "no email for an address without an account"
    );
    notifier.stop().await.unwrap();
    ingest.stop().await;
}
