//! Payments: `POST v1/payments` (the caller's RESERVED order, at exactly its amount, becomes a
//! `PaymentSubmitted` on `payments.requests`), `GET v1/payments` and `GET v1/payments/{id}`
//! (with its history, once the payment processor has written it).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use boxoffice_avro::PaymentRequest;
use boxoffice_avro::ids;
use boxoffice_avro::records::PaymentSubmitted;
use serde::Deserialize;
use utoipa::ToSchema;

use super::orders::visible_order;
use super::views::{PageOf, PageQuery, PaymentView};
use super::{page_request, page_tokens};
use crate::auth::AuthUser;
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::openapi::problems::{InvalidPageToken, KafkaUnavailable, NoSuchOrder, NotSignedIn};
use crate::state::SharedState;
use crate::stores::{PaymentRecord, TimeCursor};
use crate::validate::{self, Checks};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentRequestBody {
    #[schema(format = Uuid)]
    pub order_id: String,
    /// The order's amount in minor units (must match exactly).
    #[serde(alias = "amount_minor")]
    #[schema(minimum = 0)]
    pub price: i64,
    /// The payment provider's token for the fan's payment method (never card data).
    #[schema(pattern = "^[!-~]{1,256}$")]
    pub payment_method: String,
}

/// Pays a reserved order.
#[utoipa::path(post, path = "/v1/payments", tag = "payments", request_body = PaymentRequestBody, security(("bearer" = [])),
    responses(
        (status = 202, description = "Submitted to the payment processor", body = PaymentView),
        NotSignedIn,
        NoSuchOrder,
        (status = 409, description = "The order is not awaiting payment", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields or wrong price", body = Problem, content_type = "application/problem+json"),
        KafkaUnavailable,
    ))]
pub async fn create_payment(
    State(state): State<SharedState>,
    user: AuthUser,
    ApiJson(body): ApiJson<PaymentRequestBody>,
) -> ApiResult<(StatusCode, Json<PaymentView>)> {
    let mut checks = Checks::new();
    let order_id = checks.check("order_id", validate::id(&body.order_id));
    let method = checks.check(
        "payment_method",
        if body.payment_method.is_empty()
            || body.payment_method.len() > 256
            || !body.payment_method.bytes().all(|b| b.is_ascii_graphic())
        {
            Err("must be a payment method token: 1 to 256 visible ASCII characters".to_owned())
        } else {
            Ok(body.payment_method.clone())
        },
    );
    checks.check("price", validate::range(body.price, 0, i64::MAX));
    checks.finish()?;
    let (Some(order_id), Some(method)) = (order_id, method) else {
        return Err(ApiError::Internal(
            "validation passed without values".to_owned(),
        ));
    };
    let order = visible_order(&state, &user, &order_id).await?;
    if order.user_id != user.user_id {
        return Err(ApiError::NotFound("no such order".to_owned()));
    }
    let decision = state
        .stores
        .orders
        .decision(&order.event_id, &order.id)
        .await?;
    let Some(decision) = decision.filter(|d| d.status == "RESERVED") else {
        return Err(ApiError::Conflict(
            "the order is not awaiting payment (it must be RESERVED)".to_owned(),
        ));
    };
    if body.price != decision.amount_minor {
        return Err(ApiError::field(
            "price",
            format!(
                "must equal the order's amount, {} (minor units of {})",
                decision.amount_minor, decision.currency
            ),
        ));
    }
    let payment_id = decision
        .payment_id
        .clone()
        .unwrap_or_else(|| ids::payment_id(&order.id));
    let now = crate::now_millis();
    let record = PaymentRequest::PaymentSubmitted(PaymentSubmitted {
        record_id: ids::record_id_for::<PaymentSubmitted>(&[&payment_id]),
        payment_id: payment_id.clone(),
        order_id: order.id.clone(),
        event_id: order.event_id.clone(),
        user_id: order.user_id.clone(),
        amount_minor: decision.amount_minor,
        currency: decision.currency.clone(),
        payment_method_token: method,
        occurred_at: now,
    });
    let payment = PaymentRecord {
        id: payment_id,
        order_id: order.id.clone(),
        user_id: order.user_id.clone(),
        amount_minor: decision.amount_minor,
        currency: decision.currency.clone(),
        status: "SUBMITTED".to_owned(),
        provider_reference: None,
        // The order's time: a repeated submission writes the same listing row.
        created_at: order.created_at,
        updated_at: now,
    };
    state.stores.payments.record_submission(&payment).await?;
    state.bus.send_payment(&record).await.map_err(|e| {
        tracing::warn!(error = %e, order_id = %order.id, "payment submission not acknowledged by Kafka");
        ApiError::unavailable("the payment could not be submitted; retry")
    })?;
    Ok((StatusCode::ACCEPTED, Json(PaymentView::new(&payment, &[]))))
}

/// One payment with its history (its owner or an admin).
#[utoipa::path(get, path = "/v1/payments/{id}", tag = "payments", security(("bearer" = [])),
    params(("id" = String, Path, description = "Payment id")),
    responses(
        (status = 200, description = "The payment", body = PaymentView),
        NotSignedIn,
        (status = 404, description = "No such payment (or not yours)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_payment(
    State(state): State<SharedState>,
    user: AuthUser,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<PaymentView>> {
    let not_found = || ApiError::NotFound("no such payment".to_owned());
    let id = validate::id(&id).map_err(|_| not_found())?;
    let (payment, history) = tokio::join!(
        state.stores.payments.get_payment(&id),
        state.stores.payments.history(&id)
    );
    let payment = payment?.ok_or_else(not_found)?;
    if !user.may_access(&payment.user_id) {
        return Err(not_found());
    }
    Ok(Json(PaymentView::new(&payment, &history?)))
}

const LIST: &str = "payments";

/// The caller's payments, newest first.
#[utoipa::path(get, path = "/v1/payments", tag = "payments", params(PageQuery), security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of payments", body = PageOf<PaymentView>),
        InvalidPageToken,
        NotSignedIn,
    ))]
pub async fn list_payments(
    State(state): State<SharedState>,
    user: AuthUser,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> ApiResult<Json<PageOf<PaymentView>>> {
    let list = format!("{LIST}:{}", user.user_id);
    let request = page_request(&state, &list, &query)?;
    let page = state
        .stores
        .payments
        .list_payments(&user.user_id, &request)
        .await?;
    let (next_token, previous_token) =
        page_tokens(&state, &list, &request, &page, |p| TimeCursor {
            at: p.created_at,
            id: p.id.clone(),
        });
    Ok(Json(PageOf {
        items: page
            .items
            .iter()
            .map(|p| PaymentView::new(p, &[]))
            .collect(),
        next_token,
        previous_token,
    }))
}
