//! Server-sent event streams: an event's availability (resumable with `Last-Event-ID`, see
//! `live`), one order's status changes (until a final state), and the caller's notifications.
//! Each stream is fed by a task that ends when the client goes or the server shuts down.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use boxoffice_avro::OrderEvent;
use boxoffice_avro::RecordGroup;
use boxoffice_avro::records::AvailabilityChanged;
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use utoipa::IntoParams;

use super::orders::{view_from_event, visible_order};
use super::tickets::find_event;
use super::views::{AvailabilityView, NotificationView, OrderView};
use crate::auth::AuthUser;
use crate::error::ApiResult;
use crate::extract::{ApiPath, ApiQuery};
use crate::live::Resume;
use crate::openapi::problems::{NoSuchEvent, NoSuchOrder, NotSignedIn};
use crate::state::SharedState;
use crate::stores::NotificationRecord;

type EventStream = Response;

/// Events buffered per stream before a slow client holds the feeding task up.
const STREAM_BUFFER: usize = 64;

fn stream(receiver: mpsc::Receiver<Result<Event, Infallible>>) -> EventStream {
    Sse::new(ReceiverStream::new(receiver))
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn json_event(name: &str, id: &str, data: &impl serde::Serialize) -> Event {
    Event::default()
        .event(name)
        .id(id)
        .data(serde_json::to_string(data).unwrap_or_else(|_| "{}".to_owned()))
}

#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ResumeQuery {
    /// The last sequence number seen (same as the `Last-Event-ID` header, which wins).
    pub last_event_id: Option<i64>,
}

#[derive(Debug, serde::Serialize)]
struct AvailabilityData<'a> {
    event_id: &'a str,
    #[serde(flatten)]
    availability: AvailabilityView,
}

fn availability_event(change: &AvailabilityChanged) -> Event {
    let view = AvailabilityView {
        total: i64::from(change.total),
        available: i64::from(change.available),
        held: i64::from(change.held),
        sold: i64::from(change.sold),
        sequence: change.sequence,
    };
    json_event(
        "availability",
        &change.sequence.to_string(),
        &AvailabilityData {
            event_id: &change.event_id,
            availability: view,
        },
    )
}

/// Live availability of an event. Every message is the event's full inventory with its
/// sequence number as the SSE id; a reconnect with `Last-Event-ID` gets every change after
/// it, or the latest state when that is too old to replay.
#[utoipa::path(get, path = "/v1/tickets/{id}/availability/stream", tag = "live",
    params(("id" = String, Path, description = "Event id"), ResumeQuery,
           ("Last-Event-ID" = Option<String>, Header, description = "Sequence number last seen")),
    responses(
        (status = 200, description = "text/event-stream of `availability` events", content_type = "text/event-stream", body = String),
        NoSuchEvent,
    ))]
pub async fn availability_stream(
    State(state): State<SharedState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<ResumeQuery>,
    headers: HeaderMap,
) -> ApiResult<EventStream> {
    let event = find_event(&state, &id).await?;
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok())
        .or(query.last_event_id);
    let mut changes = state.live.subscribe_availability();
    let mut first: Vec<Event> = Vec::new();
    let mut last_sent = after.unwrap_or(-1);
    match state.live.resume(&event.id, after) {
        Resume::Replay(list) => {
            for change in list {
                last_sent = last_sent.max(change.sequence);
                first.push(availability_event(&change));
            }
        }
        Resume::Snapshot(latest) => {
            last_sent = latest.sequence;
            first.push(availability_event(&latest));
        }
        Resume::Unknown => {
            let current = super::tickets::availability_of(&state, &event).await?;
            if after.is_none_or(|a| current.sequence > a) {
                last_sent = current.sequence;
                first.push(json_event(
                    "availability",
                    &current.sequence.to_string(),
                    &AvailabilityData {
                        event_id: &event.id,
                        availability: current,
                    },
                ));
            }
        }
    }
    let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
    let live = Arc::clone(&state.live);
    let mut stopping = state.stopping.subscribe();
    let event_id = event.id.clone();
    tokio::spawn(async move {
        for message in first {
            if sender.send(Ok(message)).await.is_err() {
                return;
            }
        }
        loop {
            let change = tokio::select! {
                _ = stopping.changed() => return,
                _ = sender.closed() => return,
                change = changes.recv() => change,
            };
            let change = match change {
                Ok(change) if change.event_id == event_id && change.sequence > last_sent => change,
                Ok(_) => continue,
                // Fell behind: the latest state covers everything skipped.
                Err(broadcast::error::RecvError::Lagged(_)) => match live.latest(&event_id) {
                    Some(latest) if latest.sequence > last_sent => latest,
                    _ => continue,
                },
                Err(broadcast::error::RecvError::Closed) => return,
            };
            last_sent = change.sequence;
            if sender.send(Ok(availability_event(&change))).await.is_err() {
                return;
            }
        }
    });
    Ok(stream(receiver))
}

fn is_final(event: &OrderEvent) -> bool {
    matches!(
        event,
        OrderEvent::OrderRejected(_)
            | OrderEvent::OrderExpired(_)
            | OrderEvent::OrderCancelled(_)
            | OrderEvent::TicketsIssued(_)
    )
}

/// Status changes of one order (owner or admin): first its current state, then each change;
/// the stream ends after a final state (rejected, expired, cancelled, or tickets issued).
#[utoipa::path(get, path = "/v1/orders/{id}/stream", tag = "live", security(("bearer" = [])),
    params(("id" = String, Path, description = "Order id")),
    responses(
        (status = 200, description = "text/event-stream of `order` events (data: the order)", content_type = "text/event-stream", body = OrderView),
        NotSignedIn,
        NoSuchOrder,
    ))]
pub async fn order_stream(
    State(state): State<SharedState>,
    user: AuthUser,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<EventStream> {
    let order = visible_order(&state, &user, &id).await?;
    let mut facts = state.live.subscribe_orders();
    let decision = state
        .stores
        .orders
        .decision(&order.event_id, &order.id)
        .await?;
    let current = OrderView::new(&order, decision.as_ref());
    let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
    let mut stopping = state.stopping.subscribe();
    tokio::spawn(async move {
        if sender
            .send(Ok(json_event("order", &current.status, &current)))
            .await
            .is_err()
        {
            return;
        }
        if matches!(
            current.status.as_str(),
            "REJECTED" | "EXPIRED" | "CANCELLED"
        ) {
            return;
        }
        loop {
            let fact = tokio::select! {
                _ = stopping.changed() => return,
                _ = sender.closed() => return,
                fact = facts.recv() => fact,
            };
            let fact = match fact {
                Ok(fact) if fact.order_id() == order.id => fact,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            };
            let view = view_from_event(&order, &fact);
            let message = match fact.as_ref() {
                OrderEvent::TicketsIssued(t) => {
                    json_event("tickets", fact.record_id(), &t.ticket_ids)
                }
                _ => json_event("order", fact.record_id(), &view),
            };
            if sender.send(Ok(message)).await.is_err() || is_final(&fact) {
                return;
            }
        }
    });
    Ok(stream(receiver))
}

/// The caller's notifications as they happen.
#[utoipa::path(get, path = "/v1/notifications/stream", tag = "live", security(("bearer" = [])),
    responses(
        (status = 200, description = "text/event-stream of `notification` events", content_type = "text/event-stream", body = NotificationView),
        NotSignedIn,
    ))]
pub async fn notification_stream(
    State(state): State<SharedState>,
    user: AuthUser,
) -> ApiResult<EventStream> {
    let mut notifications = state.live.subscribe_notifications();
    let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
    let mut stopping = state.stopping.subscribe();
    tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                _ = stopping.changed() => return,
                _ = sender.closed() => return,
                next = notifications.recv() => next,
            };
            let n = match next {
                Ok(n) if n.user_id == user.user_id => n,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            };
            let record = NotificationRecord {
                id: n.record_id.clone(),
                user_id: n.user_id.clone(),
                kind: serde_json::to_value(n.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                order_id: n.order_id.clone(),
                event_id: n.event_id.clone(),
                params: n.params.clone(),
                // Just happened: nobody has read it.
                read: false,
                created_at: n.occurred_at,
            };
            let message = json_event("notification", &record.id, &NotificationView::from(&record));
            if sender.send(Ok(message)).await.is_err() {
                return;
            }
        }
    });
    Ok(stream(receiver))
}
