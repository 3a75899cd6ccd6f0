//! The OpenAPI 3 description of the API (generated from the handlers' annotations), served at
//! `/openapi.json`, with a reference page at `/docs`.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::{FieldError, Problem};
use crate::routes::{
    accounts, auth, health, live, notifications, orders, payments, provider_webhook, tickets,
    users, views, webhooks,
};

/// The API description.
#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "boxoffice ingest API", description = "Ticket booking: accounts, events, orders, payments, notifications and webhooks, live streams. Errors are application/problem+json."),
    paths(
        health::healthz, health::readyz,
        auth::register, auth::login, auth::refresh_tokens, auth::logout,
        accounts::verify_email, accounts::request_password_reset, accounts::confirm_password_reset,
        users::list_users, users::get_user, users::update_user, users::vouch_for_email,
        tickets::search, tickets::get_event, tickets::create_event, tickets::update_event,
        tickets::list_categories, tickets::create_category, tickets::update_category,
        orders::create_order, orders::list_orders, orders::get_order, orders::cancel_order,
        payments::create_payment, payments::list_payments, payments::get_payment,
        provider_webhook::receive_provider_event,
        notifications::list_notifications, notifications::mark_read, notifications::mark_all_read,
        webhooks::create_webhook, webhooks::list_webhooks, webhooks::get_webhook,
        webhooks::delete_webhook, webhooks::enable_webhook, webhooks::rotate_webhook_secret,
        live::availability_stream, live::order_stream, live::notification_stream,
    ),
    components(schemas(
        Problem, FieldError, views::UserView, views::EventView, views::OrderView, views::PaymentView,
        crate::catalogue::SortField, tickets::SortOrder,
    )),
    modifiers(&BearerAuth, &Links),
    tags(
        (name = "auth", description = "Accounts and sessions"),
        (name = "users", description = "User profiles"),
        (name = "events", description = "The catalogue (the seed's tickets) and categories"),
        (name = "orders", description = "Booking"),
        (name = "payments", description = "Paying reserved orders; the payment provider's callback"),
        (name = "notifications", description = "In-app notifications"),
        (name = "webhooks", description = "Signed webhook endpoints the notifier delivers to"),
        (name = "live", description = "Server-sent event streams"),
        (name = "health", description = "Probes"),
    )
)]
pub struct ApiDoc;

/// The API description as served at `/openapi.json`: [`ApiDoc`] with its links' field names as
/// OpenAPI spells them (utoipa 5 writes `Link` fields in snake case: `operation_id`,
/// `request_body`, which OpenAPI tools do not read).
pub fn document() -> serde_json::Value {
    let mut document = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    if let Some(paths) = document["paths"].as_object_mut() {
        let responses = paths
            .values_mut()
            .filter_map(serde_json::Value::as_object_mut)
            .flat_map(|item| item.values_mut())
            .filter_map(|operation| operation.get_mut("responses"))
            .filter_map(serde_json::Value::as_object_mut)
            .flat_map(|responses| responses.values_mut());
        for response in responses {
            // `get_mut`: indexing a JSON object mutably would add `"links": null`.
            let Some(links) = response
                .get_mut("links")
                .and_then(serde_json::Value::as_object_mut)
            else {
                continue;
            };
            for link in links
                .values_mut()
                .filter_map(serde_json::Value::as_object_mut)
            {
                for (written, openapi) in [
                    ("operation_id", "operationId"),
                    ("operation_ref", "operationRef"),
                    ("request_body", "requestBody"),
                ] {
                    if let Some(value) = link.remove(written) {
                        link.insert(openapi.to_owned(), value);
                    }
                }
            }
        }
    }
    document
}

/// OpenAPI links: which answer gives the id another operation takes (clients and generated
/// tests, such as schemathesis's stateful phase, follow them to real resources).
#[derive(Debug)]
struct Links;

/// `(path, method, statuses, link name, target operation id, parameters, request body)`; the
/// values are OpenAPI runtime expressions (`$response.body#/id`).
type LinkRow = (
    &'static str,
    &'static str,
    &'static [&'static str],
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
    Option<fn() -> serde_json::Value>,
);

const ID: &[(&str, &str)] = &[("id", "$response.body#/id")];
const USER_ID: &[(&str, &str)] = &[("id", "$response.body#/user_id")];
/// An order is answered 202 (accepted) or, with `?wait`, 200 (decided).
const ORDER_ANSWERS: &[&str] = &["200", "202"];

#[rustfmt::skip] // a table: one link a line
const LINKS: &[LinkRow] = &[
    ("/v1/login", "post", &["200"], "GetUser", "get_user", USER_ID, None),
    ("/v1/login", "post", &["200"], "UpdateUser", "update_user", USER_ID, None),
    ("/v1/tickets", "post", &["201"], "GetEvent", "get_event", ID, None),
    ("/v1/tickets", "post", &["201"], "UpdateEvent", "update_event", ID, None),
    ("/v1/tickets", "post", &["201"], "BookEvent", "create_order", &[],
     Some(|| serde_json::json!({"event_id": "$response.body#/id", "number_slot": 1}))),
    ("/v1/categories", "post", &["201"], "UpdateCategory", "update_category", ID, None),
    ("/v1/orders", "post", ORDER_ANSWERS, "GetOrder", "get_order", ID, None),
    ("/v1/orders", "post", ORDER_ANSWERS, "CancelOrder", "cancel_order", ID, None),
    ("/v1/orders/{id}", "get", &["200"], "PayOrder", "create_payment", &[],
     Some(|| serde_json::json!({"order_id": "$response.body#/id",
                                "price": "$response.body#/amount_minor",
                                "payment_method": "tok_success"}))),
    ("/v1/payments", "post", &["202"], "GetPayment", "get_payment", ID, None),
    ("/v1/webhooks", "post", &["201"], "GetWebhook", "get_webhook", ID, None),
    ("/v1/webhooks", "post", &["201"], "EnableWebhook", "enable_webhook", ID, None),
    ("/v1/webhooks", "post", &["201"], "RotateWebhookSecret", "rotate_webhook_secret", ID, None),
    ("/v1/webhooks", "post", &["201"], "DeleteWebhook", "delete_webhook", ID, None),
];

impl Modify for Links {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::RefOr;
        use utoipa::openapi::link::Link;
        for (path, method, statuses, name, target, parameters, body) in LINKS {
            let Some(item) = openapi.paths.paths.get_mut(*path) else {
                continue;
            };
            let operation = match *method {
                "get" => item.get.as_mut(),
                "post" => item.post.as_mut(),
                "put" => item.put.as_mut(),
                _ => None,
            };
            let Some(operation) = operation else {
                continue;
            };
            for status in *statuses {
                let Some(RefOr::T(response)) = operation.responses.responses.get_mut(*status)
                else {
                    continue;
                };
                let mut link = Link::builder().operation_id(*target);
                for (parameter, value) in *parameters {
                    link = link.parameter(*parameter, *value);
                }
                link = link.request_body(body.map(|make| make()));
                response
                    .links
                    .insert((*name).to_owned(), RefOr::T(link.build()));
            }
        }
    }
}

#[derive(Debug)]
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// Problem answers that many operations share, named once for their `responses(...)` lists so
/// that each description is written in one place. Each is `application/problem+json` with the
/// [`Problem`] schema.
pub mod problems {
    use crate::error::Problem;

    macro_rules! problem_answer {
        ($($(#[$doc:meta])* $name:ident = ($status:tt, $description:tt);)+) => {$(
            $(#[$doc])*
            #[derive(Debug, utoipa::IntoResponses)]
            #[response(status = $status, description = $description, content_type = "application/problem+json")]
            #[allow(dead_code)] // a documentation type: only its derived description is used
            pub struct $name(Problem);
        )+};
    }

    problem_answer! {
        NotSignedIn = (401, "Not signed in");
        NotAdmin = (403, "Not an admin");
        InvalidPageToken = (400, "Invalid page token");
        InvalidFields = (422, "Invalid fields");
        KafkaUnavailable = (503, "Kafka unavailable");
        NoSuchOrder = (404, "No such order (or not yours)");
        OrderNotStoredYet = (503, "Your order was accepted moments ago and has no decision yet: retry after Retry-After (never a 404 for your own order)");
        NoSuchEvent = (404, "No such event");
        NoSuchEndpoint = (404, "No such endpoint (or not yours)");
        NoSuchUser = (404, "No such user (or not yours)");
        NoSuchNotification = (404, "No such notification (or not yours)");
        TooManyStreams = (429, "Too many open streams for this account or address, or on this server (Retry-After)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_link_starts_at_a_described_answer_and_names_a_real_operation() {
        let spec = document();
        let operation_ids: Vec<&str> = spec["paths"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|item| item.as_object().unwrap().values())
            .filter_map(|operation| operation["operationId"].as_str())
            .collect();
        for (path, method, statuses, name, target, ..) in LINKS {
            for status in *statuses {
                let link = &spec["paths"][path][method]["responses"][status]["links"][name];
                assert_eq!(
                    link["operationId"], *target,
                    "{method} {path} {status}: {name}"
                );
                assert!(
                    link.get("operation_id").is_none(),
                    "OpenAPI's names: {link}"
                );
            }
            assert!(operation_ids.contains(target), "{target} is an operation");
        }
        // `links` only where a link is: no response gained an empty or null one.
        assert!(!document().to_string().contains("\"links\":null"));
    }
}
