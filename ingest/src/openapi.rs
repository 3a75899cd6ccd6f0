//! The OpenAPI 3 description of the API (generated from the handlers' annotations), served at
//! `/openapi.json`, with a reference page at `/docs`.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::{FieldError, Problem};
use crate::routes::{
    auth, health, live, notifications, orders, payments, provider_webhook, tickets, users, views,
    webhooks,
};

/// The API description.
#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "boxoffice ingest API", description = "Ticket booking: accounts, events, orders, payments, notifications and webhooks, live streams. Errors are application/problem+json."),
    paths(
        health::healthz, health::readyz,
        auth::register, auth::login, auth::refresh_tokens, auth::logout,
        users::list_users, users::get_user, users::update_user,
        tickets::search, tickets::get_event, tickets::create_event, tickets::update_event,
        tickets::list_categories, tickets::create_category, tickets::update_category,
        orders::create_order, orders::list_orders, orders::get_order, orders::cancel_order,
        payments::create_payment, payments::list_payments, payments::get_payment,
        provider_webhook::receive_provider_event,
        notifications::list_notifications,
        webhooks::create_webhook, webhooks::list_webhooks, webhooks::get_webhook,
        webhooks::delete_webhook, webhooks::enable_webhook, webhooks::rotate_webhook_secret,
        live::availability_stream, live::order_stream, live::notification_stream,
    ),
    components(schemas(
        Problem, FieldError, views::UserView, views::EventView, views::OrderView, views::PaymentView,
        crate::catalogue::SortField, tickets::SortOrder,
    )),
    modifiers(&BearerAuth),
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
        NoSuchEvent = (404, "No such event");
        NoSuchEndpoint = (404, "No such endpoint (or not yours)");
        NoSuchUser = (404, "No such user (or not yours)");
        TooManyStreams = (429, "Too many open streams for this account or address, or on this server (Retry-After)");
    }
}
