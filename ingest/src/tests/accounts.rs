//! Email verification, password reset and the admin's vouching, through the router (issue 13,
//! findings 8 and 9): links come from the recorded account notices, as the email would carry
//! them.

use super::*;
use boxoffice_avro::records::NotificationKind;

async fn login(h: &Harness, name: &str, password: &str) -> Reply {
    h.call(
        "POST",
        "/v1/login",
        None,
        Some(json!({"login": name, "password": password})),
    )
    .await
}

async fn order(h: &Harness, token: &str, event: &str) -> Reply {
    h.call(
        "POST",
        "/v1/orders",
        Some(token),
        Some(json!({"event_id": event, "number_slot": 1})),
    )
    .await
}

#[tokio::test]
async fn an_account_books_only_once_its_address_is_verified() {
    let h = Harness::new();
    let event = h.event();
    h.register("nina").await;
    let signed_in = login(&h, "nina", "a good password").await;
    assert_eq!(signed_in.status, StatusCode::OK, "{}", signed_in.body);
    let token = signed_in.body["access_token"].as_str().unwrap().to_owned();
    let refused = order(&h, &token, &event).await;
    refused.assert_problem(403);
    assert!(
        refused.body["detail"]
            .as_str()
            .unwrap()
            .contains("verify your email"),
        "{}",
        refused.body
    );
    assert!(
        h.bus.commands.lock().unwrap().is_empty(),
        "nothing produced"
    );

    // The link in the email verifies the address; a refreshed token may book.
    let notice = h
        .notice(NotificationKind::EmailVerification, "nina@example.com")
        .unwrap();
    let token_in_link = notice.params["link"]
        .strip_prefix("https://tickets.example/verify-email#token=")
        .unwrap();
    assert_eq!(token_in_link, notice.params["token"]);
    let verified = h.verify("nina").await;
    assert_eq!(verified.status, StatusCode::OK, "{}", verified.body);
    assert_eq!(verified.body["email_verified"], true);
    order(&h, &token, &event).await.assert_problem(403);
    let refreshed = h
        .call(
            "POST",
            "/v1/refresh",
            None,
            Some(json!({"refresh_token": signed_in.body["refresh_token"]})),
        )
        .await;
    assert_eq!(refreshed.status, StatusCode::OK, "{}", refreshed.body);
    let fresh = refreshed.body["access_token"].as_str().unwrap();
    assert_eq!(order(&h, fresh, &event).await.status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn links_are_refused_when_forged_or_meant_for_something_else() {
    let h = &Harness::new();
    let (_, access, _) = h.user("omar").await;
    let verify = |token: String| async move {
        h.call(
            "POST",
            "/v1/verify-email",
            None,
            Some(json!({"token": token})),
        )
        .await
    };
    // An access token, a link signed with another secret, a reset link: none verifies.
    verify(access.clone()).await.assert_problem(400);
    let foreign = crate::auth::action_token::ActionKeys::new(
        &JwtSecret::new(b"another-secret-of-at-least-32-bytes!".to_vec()).unwrap(),
        "boxoffice-ingest",
        "boxoffice-api",
    )
    .issue(
        crate::auth::action_token::Purpose::VerifyEmail,
        "someone",
        "omar@example.com",
        None,
        crate::auth::jwt::now_secs(),
    )
    .unwrap();
    verify(foreign).await.assert_problem(400);
    h.call(
        "POST",
        "/v1/password-reset",
        None,
        Some(json!({"email": "omar@example.com"})),
    )
    .await;
    let reset = h
        .notice(NotificationKind::PasswordReset, "omar@example.com")
        .unwrap();
    verify(reset.params["token"].clone())
        .await
        .assert_problem(400);
    verify("x".repeat(5000)).await.assert_problem(400);
    // A verification link is no access token either.
    let link = h
        .notice(NotificationKind::EmailVerification, "omar@example.com")
        .unwrap();
    h.call("GET", "/v1/orders", Some(&link.params["token"]), None)
        .await
        .assert_problem(401);
}

#[tokio::test]
async fn a_password_reset_works_once_and_ends_older_sessions() {
    let h = &Harness::new();
    let (_, _, old_refresh) = h.user("pia").await;
    let ask = |email: &'static str| async move {
        h.call(
            "POST",
            "/v1/password-reset",
            None,
            Some(json!({"email": email})),
        )
        .await
    };
    // The same answer for an address without an account, and nothing is sent.
    let unknown = ask("nobody@example.com").await;
    let known = ask("pia@example.com").await;
    assert_eq!(unknown.status, StatusCode::ACCEPTED);
    assert_eq!((unknown.status, &unknown.body), (known.status, &known.body));
    assert!(
        h.notice(NotificationKind::PasswordReset, "nobody@example.com")
            .is_none()
    );
    let link = h
        .notice(NotificationKind::PasswordReset, "pia@example.com")
        .unwrap();
    assert!(
        link.params["link"].starts_with("https://tickets.example/reset-password#token="),
        "{link:?}"
    );
    let confirm = |password: &'static str| {
        let token = link.params["token"].clone();
        async move {
            h.call(
                "POST",
                "/v1/password-reset/confirm",
                None,
                Some(json!({"token": token, "password": password})),
            )
            .await
        }
    };
    confirm("short").await.assert_problem(422);
    assert_eq!(
        confirm("a brand new password").await.status,
        StatusCode::NO_CONTENT
    );
    // Used once: the same link no longer works.
    confirm("yet another password").await.assert_problem(400);
    login(h, "pia", "a good password").await.assert_problem(401);
    assert_eq!(
        login(h, "pia", "a brand new password").await.status,
        StatusCode::OK
    );
    // The session from before the reset cannot be refreshed.
    h.call(
        "POST",
        "/v1/refresh",
        None,
        Some(json!({"refresh_token": old_refresh})),
    )
    .await
    .assert_problem(401);
}

#[tokio::test]
async fn an_admin_vouches_for_an_address_and_no_one_else_can() {
    let h = Harness::new();
    let admin = h.admin().await;
    h.register("quin").await;
    let quin = login(&h, "quin", "a good password").await;
    let id = quin.body["user_id"].as_str().unwrap().to_owned();
    let token = quin.body["access_token"].as_str().unwrap().to_owned();
    let path = format!("/v1/users/{id}/verify-email");
    h.call("POST", &path, Some(&token), None)
        .await
        .assert_problem(403);
    let vouched = h.call("POST", &path, Some(&admin), None).await;
    assert_eq!(vouched.status, StatusCode::OK, "{}", vouched.body);
    assert_eq!(vouched.body["email_verified"], true);
    h.call(
        "POST",
        "/v1/users/no-such-user/verify-email",
        Some(&admin),
        None,
    )
    .await
    .assert_problem(404);
}
