//! Server-sent event streams: an event's availability (resumable with `Last-Event-ID`, see
//! `live`), one order's status changes (until a final state), and the caller's notifications.
//! Each stream is fed by a task that holds one of the replica's stream slots
//! ([`crate::stream_slots`]: per account or client address, and in total; 429 beyond) and ends
//! when the client goes, or, with a final `end` event naming why, when the server stops or
//! (for the signed-in streams) the caller's access token expires or their session is logged
//! out or revoked.

use std::convert::Infallible;
use std::future::{Future, ready};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use boxoffice_avro::OrderEvent;
use boxoffice_avro::RecordGroup;
use boxoffice_avro::records::AvailabilityChanged;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::{BroadcastStream, ReceiverStream};
use utoipa::IntoParams;

use super::orders::{view_from_event, visible_order};
use super::tickets::find_event;
use super::views::{AvailabilityView, NotificationView, OrderView};
use crate::auth::{AuthUser, UncheckedUser};
use crate::client_address::ClientAddress;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiPath, ApiQuery};
use crate::live::Resume;
use crate::openapi::problems::{NoSuchEvent, NoSuchOrder, NotSignedIn, TooManyStreams};
use crate::state::SharedState;
use crate::stores::NotificationRecord;
use crate::stream_slots::{SlotRefused, StreamOwner, StreamSlot};

type EventStream = Response;
type Sender = mpsc::Sender<Result<Event, Infallible>>;

/// Events buffered per stream before a slow client holds the feeding task up.
const STREAM_BUFFER: usize = 64;

/// How often an open signed-in stream re-checks that its session was not logged out or revoked
/// (the session cache may answer from up to 5 s before: a logout shows within about 10 s).
const SESSION_RECHECK: Duration = Duration::from_secs(5);

/// `Retry-After` when no stream slot is free.
const SLOT_RETRY_AFTER: Duration = Duration::from_secs(5);

/// Why a stream ended: the `reason` of its final `end` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StreamEnd {
    /// The access token the stream was opened with expired: refresh and reopen.
    TokenExpired,
    /// The session was logged out or revoked.
    SessionRevoked,
    /// The server is shutting down: reconnect (to another replica).
    ServerStopping,
}

#[derive(Debug, Serialize)]
struct EndData {
    reason: StreamEnd,
}

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

/// A stream slot for `owner`, or 429.
fn slot(state: &SharedState, owner: StreamOwner<'_>) -> ApiResult<StreamSlot> {
    state
        .stream_slots
        .take(owner)
        .map_err(|refused: SlotRefused| ApiError::TooManyRequests {
            detail: refused.to_string(),
            retry_after: SLOT_RETRY_AFTER,
        })
}

/// Resolves when `user`'s session is over for this stream: the access token expired, or a
/// re-check (every [`SESSION_RECHECK`]) finds the session logged out or revoked. A re-check
/// that fails (store unavailable) keeps the stream; the expiry bounds how long.
async fn session_over(state: SharedState, user: AuthUser) -> StreamEnd {
    let expires_at = UNIX_EPOCH + Duration::from_secs(user.expires_at);
    let left = expires_at
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    let expiry = tokio::time::sleep(left);
    tokio::pin!(expiry);
    let mut recheck = tokio::time::interval(SESSION_RECHECK);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let user = UncheckedUser(user);
    loop {
        tokio::select! {
            () = &mut expiry => return StreamEnd::TokenExpired,
            _ = recheck.tick() => {
                if let Err(ApiError::Unauthorized(_)) = user.check(&state).await {
                    return StreamEnd::SessionRevoked;
                }
            }
        }
    }
}

/// Feeds one stream: `first`, then `events` until they end (the stream's own last state) or
/// the client goes; when the server stops or `over` resolves first, a final `end` event says
/// why. Holds `slot` until it returns.
async fn feed(
    sender: Sender,
    slot: StreamSlot,
    mut stopping: watch::Receiver<bool>,
    over: impl Future<Output = StreamEnd>,
    first: Vec<Event>,
    events: impl Stream<Item = Event>,
) {
    let _slot = slot;
    tokio::pin!(over);
    tokio::pin!(events);
    let mut pending = first.into_iter();
    let end = loop {
        let next = match pending.next() {
            Some(event) => Some(event),
            None => tokio::select! {
                _ = stopping.changed() => break StreamEnd::ServerStopping,
                end = &mut over => break end,
                () = sender.closed() => return,
                event = events.next() => event,
            },
        };
        let Some(event) = next else { return };
        // A client that stops reading holds the send; its session still ends it.
        tokio::select! {
            sent = sender.send(Ok(event)) => if sent.is_err() { return },
            _ = stopping.changed() => break StreamEnd::ServerStopping,
            end = &mut over => break end,
        }
    };
    let end = Event::default()
        .event("end")
        .data(serde_json::to_string(&EndData { reason: end }).unwrap_or_else(|_| "{}".to_owned()));
    // Best effort: a client whose buffer is full is not waited for.
    let _ = sender.try_send(Ok(end));
}

/// Starts [`feed`] on its own task; answers the stream.
fn spawn_feed(
    state: &SharedState,
    slot: StreamSlot,
    over: impl Future<Output = StreamEnd> + Send + 'static,
    first: Vec<Event>,
    events: impl Stream<Item = Event> + Send + 'static,
) -> EventStream {
    let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
    let stopping = state.stopping.subscribe();
    tokio::spawn(feed(sender, slot, stopping, over, first, events));
    stream(receiver)
}

/// Live availability of an event. Every message is the event's full inventory with its
/// sequence number as the SSE id. Sequence numbers grow but have gaps (a burst of bookings is
/// published as its latest state); a reconnect with `Last-Event-ID` gets the kept changes
/// after it, or the latest state when that is too old to replay.
#[utoipa::path(get, path = "/v1/tickets/{id}/availability/stream", tag = "live",
    params(("id" = String, Path, description = "Event id"), ResumeQuery,
           ("Last-Event-ID" = Option<String>, Header, description = "Sequence number last seen")),
    responses(
        (status = 200, description = "text/event-stream of `availability` events (and a final `end` event when the server stops)", content_type = "text/event-stream", body = String),
        NoSuchEvent,
        TooManyStreams,
    ))]
pub async fn availability_stream(
    State(state): State<SharedState>,
    ClientAddress(address): ClientAddress,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<ResumeQuery>,
    headers: HeaderMap,
) -> ApiResult<EventStream> {
    let event = find_event(&state, &id).await?;
    let slot = slot(&state, StreamOwner::Address(&address))?;
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok())
        .or(query.last_event_id);
    let changes = state.live.subscribe_availability();
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
    let live = Arc::clone(&state.live);
    let event_id = event.id;
    let events = BroadcastStream::new(changes).filter_map(move |change| {
        let next = match change {
            Ok(change) if change.event_id == event_id && change.sequence > last_sent => {
                Some(change)
            }
            Ok(_) => None,
            // Fell behind: the latest state covers everything skipped.
            Err(BroadcastStreamRecvError::Lagged(_)) => live
                .latest(&event_id)
                .filter(|latest| latest.sequence > last_sent),
        };
        if let Some(change) = &next {
            last_sent = change.sequence;
        }
        ready(next.map(|change| availability_event(&change)))
    });
    let over = std::future::pending();
    Ok(spawn_feed(&state, slot, over, first, events))
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
/// the stream ends after a final state (rejected, expired, cancelled, or tickets issued), or
/// with an `end` event when the caller's token expires or session ends.
#[utoipa::path(get, path = "/v1/orders/{id}/stream", tag = "live", security(("bearer" = [])),
    params(("id" = String, Path, description = "Order id")),
    responses(
        (status = 200, description = "text/event-stream of `order` events (data: the order), and a final `end` event (data: `reason`) when the token expires, the session ends or the server stops", content_type = "text/event-stream", body = OrderView),
        NotSignedIn,
        NoSuchOrder,
        TooManyStreams,
    ))]
pub async fn order_stream(
    State(state): State<SharedState>,
    user: AuthUser,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<EventStream> {
    let order = visible_order(&state, &user, &id).await?;
    let slot = slot(&state, StreamOwner::Account(&user.user_id))?;
    let facts = state.live.subscribe_orders();
    let decision = state
        .stores
        .orders
        .decision(&order.event_id, &order.id)
        .await?;
    let current = OrderView::new(&order, decision.as_ref());
    let decided = matches!(
        current.status.as_str(),
        "REJECTED" | "EXPIRED" | "CANCELLED"
    );
    let first = vec![json_event("order", &current.status, &current)];
    if decided {
        let over = std::future::pending();
        return Ok(spawn_feed(
            &state,
            slot,
            over,
            first,
            futures::stream::empty(),
        ));
    }
    let events = BroadcastStream::new(facts)
        .filter_map(move |fact| {
            ready(match fact {
                Ok(fact) if fact.order_id() == order.id => {
                    let message = match fact.as_ref() {
                        OrderEvent::TicketsIssued(t) => {
                            json_event("tickets", fact.record_id(), &t.ticket_ids)
                        }
                        _ => json_event("order", fact.record_id(), &view_from_event(&order, &fact)),
                    };
                    Some((message, is_final(&fact)))
                }
                Ok(_) | Err(BroadcastStreamRecvError::Lagged(_)) => None,
            })
        })
        // Up to and including the first final state.
        .scan(false, |ended, (message, last)| {
            let next = (!*ended).then_some(message);
            *ended = last;
            ready(next)
        });
    let over = session_over(Arc::clone(&state), user);
    Ok(spawn_feed(&state, slot, over, first, events))
}

/// The caller's notifications as they happen, until the caller's token expires or session
/// ends (a final `end` event says which).
#[utoipa::path(get, path = "/v1/notifications/stream", tag = "live", security(("bearer" = [])),
    responses(
        (status = 200, description = "text/event-stream of `notification` events, and a final `end` event (data: `reason`) when the token expires, the session ends or the server stops", content_type = "text/event-stream", body = NotificationView),
        NotSignedIn,
        TooManyStreams,
    ))]
pub async fn notification_stream(
    State(state): State<SharedState>,
    user: AuthUser,
) -> ApiResult<EventStream> {
    let slot = slot(&state, StreamOwner::Account(&user.user_id))?;
    let notifications = state.live.subscribe_notifications();
    let user_id = user.user_id.clone();
    let events = BroadcastStream::new(notifications).filter_map(move |next| {
        ready(match next {
            Ok(n) if n.user_id == user_id => {
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
                Some(json_event(
                    "notification",
                    &record.id,
                    &NotificationView::from(&record),
                ))
            }
            Ok(_) | Err(BroadcastStreamRecvError::Lagged(_)) => None,
        })
    });
    let over = session_over(Arc::clone(&state), user);
    Ok(spawn_feed(&state, slot, over, Vec::new(), events))
}
