//! What the API answers with: JSON views of users, events, categories, orders, payments,
//! notifications and webhook endpoints (times as RFC 3339 UTC text, money in minor units), and
//! page envelopes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::pagination::PageTokens;

use crate::stores::{
    CategoryRecord, EventRecord, NotificationRecord, OrderDecision, OrderRecord,
    PaymentHistoryEntry, PaymentRecord, Role, UserRecord, WebhookEndpointRecord,
};
use crate::validate::rfc3339;

/// Page size when the client does not say.
pub const DEFAULT_PAGE_SIZE: usize = 20;
/// Largest page a client may ask for.
pub const MAX_PAGE_SIZE: usize = 100;

/// `limit` and the page token of a paginated list.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Items per page, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// The `next_token` of an earlier page of the same list: the page after it.
    pub next_token: Option<String>,
    /// The `previous_token` of an earlier page of the same list: the page before it.
    pub previous_token: Option<String>,
    /// Either token, under one name (only one of the three may be given).
    pub page_token: Option<String>,
}

impl PageQuery {
    pub fn tokens(&self) -> PageTokens<'_> {
        PageTokens {
            page_token: self.page_token.as_deref(),
            next_token: self.next_token.as_deref(),
            previous_token: self.previous_token.as_deref(),
        }
    }
}

/// One page of a list, newest first, with opaque tokens for the pages around it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PageOf<T> {
    pub items: Vec<T>,
    /// Token for the next (older) page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
    /// Token for the previous (newer) page; absent on the first page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_token: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UserView {
    pub id: String,
    pub email: String,
    pub user_name: String,
    pub first_name: String,
    pub last_name: String,
    /// `YYYY-MM-DD`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub birth_day: Option<String>,
    pub mobile_phone: String,
    pub role: Role,
    /// The owner opened the verification link (or an admin vouched): the account may book.
    pub email_verified: bool,
    pub created_at: String,
    pub updated_at: String,
}

impl From<&UserRecord> for UserView {
    fn from(u: &UserRecord) -> Self {
        UserView {
            id: u.id.clone(),
            email: u.email.clone(),
            user_name: u.user_name.clone(),
            first_name: u.first_name.clone(),
            last_name: u.last_name.clone(),
            birth_day: u.birth_day.map(|d| d.format("%Y-%m-%d").to_string()),
            mobile_phone: u.mobile_phone.clone(),
            role: u.role,
            email_verified: u.email_verified,
            created_at: rfc3339(u.created_at),
            updated_at: rfc3339(u.updated_at),
        }
    }
}

/// An event's inventory right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub struct AvailabilityView {
    pub total: i64,
    pub available: i64,
    pub held: i64,
    pub sold: i64,
    /// Sequence number of the change this reflects (0: no booking yet).
    pub sequence: i64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EventView {
    pub id: String,
    pub name: String,
    pub description: String,
    pub venue: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category_id: Option<String>,
    pub starts_at: String,
    /// Price of one slot, in minor units (cents).
    pub price_minor: i64,
    pub currency: String,
    pub is_free: bool,
    pub capacity: i32,
    pub sale_starts_at: String,
    pub sale_ends_at: String,
    pub hold_seconds: i32,
    /// 0: no limit.
    pub max_per_order: i32,
    /// 0: no limit.
    pub max_per_user: i32,
    pub availability: AvailabilityView,
    pub created_at: String,
    pub updated_at: String,
}

impl EventView {
    pub fn new(e: &EventRecord, availability: AvailabilityView) -> Self {
        EventView {
            id: e.id.clone(),
            name: e.name.clone(),
            description: e.description.clone(),
            venue: e.venue.clone(),
            category_id: e.category_id.clone(),
            starts_at: rfc3339(e.starts_at),
            price_minor: e.price_minor,
            currency: e.currency.clone(),
            is_free: e.price_minor == 0,
            capacity: e.capacity,
            sale_starts_at: rfc3339(e.sale_starts_at),
            sale_ends_at: rfc3339(e.sale_ends_at),
            hold_seconds: e.hold_seconds,
            max_per_order: e.max_per_order,
            max_per_user: e.max_per_user,
            availability,
            created_at: rfc3339(e.created_at),
            updated_at: rfc3339(e.updated_at),
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CategoryView {
    pub id: String,
    pub name: String,
    pub is_free: bool,
}

impl From<&CategoryRecord> for CategoryView {
    fn from(c: &CategoryRecord) -> Self {
        CategoryView {
            id: c.id.clone(),
            name: c.name.clone(),
            is_free: c.is_free,
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CategoryList {
    pub items: Vec<CategoryView>,
}

/// Where to go next with an order.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OrderLinks {
    #[serde(rename = "self")]
    pub self_: String,
    /// Server-sent events with the order's status changes.
    pub stream: String,
    pub cancel: String,
    /// Where to pay a reserved order.
    pub payment: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OrderView {
    pub id: String,
    pub event_id: String,
    pub user_id: String,
    pub number_slot: i32,
    /// PENDING, RESERVED, CONFIRMED, REJECTED, EXPIRED or CANCELLED.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amount_minor: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold_expires_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment_id: Option<String>,
    /// Why it was rejected or cancelled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub late_payment: bool,
    pub created_at: String,
    pub links: OrderLinks,
}

impl OrderView {
    pub fn new(order: &OrderRecord, decision: Option<&OrderDecision>) -> Self {
        let id = &order.id;
        OrderView {
            id: id.clone(),
            event_id: order.event_id.clone(),
            user_id: order.user_id.clone(),
            number_slot: order.number_slot,
            status: decision.map_or_else(|| "PENDING".to_owned(), |d| d.status.clone()),
            amount_minor: decision.map(|d| d.amount_minor),
            currency: decision
                .map(|d| d.currency.clone())
                .filter(|c| !c.is_empty()),
            hold_expires_at: decision
                .filter(|d| d.status == "RESERVED")
                .and_then(|d| d.hold_expires_at)
                .map(rfc3339),
            payment_id: decision.and_then(|d| d.payment_id.clone()),
            reason: decision.and_then(|d| d.reason.clone()),
            late_payment: decision.is_some_and(|d| d.late),
            created_at: rfc3339(order.created_at),
            links: OrderLinks {
                self_: format!("/v1/orders/{id}"),
                stream: format!("/v1/orders/{id}/stream"),
                cancel: format!("/v1/orders/{id}/cancel"),
                payment: "/v1/payments".to_owned(),
            },
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PaymentHistoryView {
    pub at: String,
    pub seq: i32,
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl From<&PaymentHistoryEntry> for PaymentHistoryView {
    fn from(h: &PaymentHistoryEntry) -> Self {
        PaymentHistoryView {
            at: rfc3339(h.at),
            seq: h.seq,
            status: h.status.clone(),
            detail: h.detail.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PaymentView {
    pub id: String,
    pub order_id: String,
    /// SUBMITTED until the payment processor has it; then its status.
    pub status: String,
    pub amount_minor: i64,
    pub currency: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_reference: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    /// Every status change, oldest first (only on `GET v1/payments/{id}`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<PaymentHistoryView>,
}

impl PaymentView {
    pub fn new(p: &PaymentRecord, history: &[PaymentHistoryEntry]) -> Self {
        PaymentView {
            id: p.id.clone(),
            order_id: p.order_id.clone(),
            status: p.status.clone(),
            amount_minor: p.amount_minor,
            currency: p.currency.clone(),
            provider_reference: p.provider_reference.clone(),
            created_at: rfc3339(p.created_at),
            updated_at: rfc3339(p.updated_at),
            history: history.iter().map(PaymentHistoryView::from).collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct NotificationView {
    pub id: String,
    /// ORDER_RESERVED, ORDER_CONFIRMED, ...
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    pub params: BTreeMap<String, String>,
    /// Whether the user has read it (`false` until marked read).
    pub read: bool,
    pub created_at: String,
}

impl From<&NotificationRecord> for NotificationView {
    fn from(n: &NotificationRecord) -> Self {
        NotificationView {
            id: n.id.clone(),
            kind: n.kind.clone(),
            order_id: n.order_id.clone(),
            event_id: n.event_id.clone(),
            params: n.params.clone(),
            read: n.read,
            created_at: rfc3339(n.created_at),
        }
    }
}

/// A webhook endpoint (never its secret).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebhookView {
    pub id: String,
    /// Where deliveries are POSTed.
    pub url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub created_at: String,
    /// No deliveries while true: the endpoint answered 410 Gone. `POST
    /// v1/webhooks/{id}/enable` turns deliveries back on.
    pub disabled: bool,
    /// Why it was disabled (only while disabled).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
    /// When it was disabled (only while disabled).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled_at: Option<String>,
}

impl From<&WebhookEndpointRecord> for WebhookView {
    fn from(e: &WebhookEndpointRecord) -> Self {
        WebhookView {
            id: e.id.clone(),
            url: e.url.clone(),
            description: e.description.clone(),
            created_at: rfc3339(e.created_at),
            disabled: e.disabled,
            disabled_reason: e.disabled_reason.clone().filter(|_| e.disabled),
            disabled_at: e.disabled_at.filter(|_| e.disabled).map(rfc3339),
        }
    }
}

/// A webhook endpoint with its signing secret: the answer of registering and of rotating the
/// secret, the only times the secret is shown.
#[derive(Clone, Serialize, ToSchema)]
pub struct WebhookWithSecretView {
    #[serde(flatten)]
    pub endpoint: WebhookView,
    /// The HMAC-SHA256 key of `X-Boxoffice-Signature` (its UTF-8 bytes, as written). Shown
    /// only now: store it.
    pub secret: String,
}

impl std::fmt::Debug for WebhookWithSecretView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookWithSecretView")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// The caller's webhook endpoints, oldest first (at most a handful: no pages).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebhookList {
    pub items: Vec<WebhookView>,
}
