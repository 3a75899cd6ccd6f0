//! Events (the seed calls them tickets) and their categories: search with filters, sorting and
//! cursor pages (`GET v1/tickets`), one event with its current availability, and the admin
//! edits. Every edit that changes inventory also goes to `booking.commands` as an
//! `EventUpserted`, so the booking processor stays the only writer of inventory.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use boxoffice_avro::BookingCommand;
use boxoffice_avro::ids;
use boxoffice_avro::records::EventUpserted;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use utoipa::{IntoParams, ToSchema};

use super::views::{
    AvailabilityView, CategoryList, CategoryView, DEFAULT_PAGE_SIZE, EventView, MAX_PAGE_SIZE,
    PageOf,
};
use crate::auth::AdminUser;
use crate::catalogue::{self, EventCursor, Filter, SortField};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::openapi::problems::{
    InvalidFields, InvalidPageToken, KafkaUnavailable, NoSuchEvent, NotAdmin, NotSignedIn,
};
use crate::pagination::PageTokens;
use crate::state::SharedState;
use crate::stores::{CategoryRecord, Direction, EventRecord};
use crate::validate::{self, Checks};

/// Sort direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SortOrder {
    #[default]
    Asc,
    Desc,
}

#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// Text looked for (case-insensitively) in name, description and venue.
    #[param(max_length = 200)]
    pub q: Option<String>,
    #[param(format = Uuid)]
    pub category_id: Option<String>,
    /// `true`: free events only; `false`: paid events only.
    pub free: Option<bool>,
    /// Events starting at or after this RFC 3339 time.
    #[param(format = DateTime)]
    pub starts_from: Option<String>,
    /// Events starting at or before this RFC 3339 time.
    #[param(format = DateTime)]
    pub starts_to: Option<String>,
    /// Lowest price per slot, minor units.
    pub price_min: Option<i64>,
    /// Highest price per slot, minor units.
    pub price_max: Option<i64>,
    /// `true`: only events with slots left.
    pub available: Option<bool>,
    /// `starts_at` (default), `name`, `price` or `created_at`.
    pub sort: Option<SortField>,
    /// `asc` (default) or `desc`.
    pub order: Option<SortOrder>,
    /// 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// The `next_token` of an earlier page of the same search: the page after it.
    pub next_token: Option<String>,
    /// The `previous_token` of an earlier page of the same search: the page before it.
    pub previous_token: Option<String>,
    /// Either token, under one name (only one of the three may be given).
    pub page_token: Option<String>,
}

/// The current inventory of `event`: the newer of the processor's stored counters and the last
/// `AvailabilityChanged` this replica saw; the configured capacity before any booking.
pub(crate) async fn availability_of(
    state: &SharedState,
    event: &EventRecord,
) -> ApiResult<AvailabilityView> {
    let stored = state.stores.catalog.inventory(&event.id).await?;
    let stored = stored.map(|s| AvailabilityView {
        total: i64::from(s.capacity),
        available: i64::from(s.capacity - s.held - s.sold).max(0),
        held: i64::from(s.held),
        sold: i64::from(s.sold),
        sequence: s.sequence,
    });
    let live = live_availability(state, &event.id);
    Ok(match (stored, live) {
        (Some(s), Some(l)) => {
            if l.sequence > s.sequence {
                l
            } else {
                s
            }
        }
        (Some(s), None) => s,
        (None, Some(l)) => l,
        (None, None) => initial_availability(event),
    })
}

fn live_availability(state: &SharedState, event_id: &str) -> Option<AvailabilityView> {
    state.live.latest(event_id).map(|c| AvailabilityView {
        total: i64::from(c.total),
        available: i64::from(c.available),
        held: i64::from(c.held),
        sold: i64::from(c.sold),
        sequence: c.sequence,
    })
}

fn initial_availability(event: &EventRecord) -> AvailabilityView {
    let capacity = i64::from(event.capacity);
    AvailabilityView {
        total: capacity,
        available: capacity,
        held: 0,
        sold: 0,
        sequence: 0,
    }
}

/// Searches events.
#[utoipa::path(get, path = "/v1/tickets", tag = "events", params(SearchQuery),
    responses(
        (status = 200, description = "A page of events", body = PageOf<EventView>),
        InvalidPageToken,
        (status = 422, description = "Invalid filters", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn search(
    State(state): State<SharedState>,
    ApiQuery(query): ApiQuery<SearchQuery>,
) -> ApiResult<Json<PageOf<EventView>>> {
    let mut checks = Checks::new();
    let text = match query.q.as_deref() {
        None => None,
        Some(q) => checks
            .check("q", validate::text(q, 0, 200))
            .filter(|q| !q.is_empty())
            .map(|q| q.to_lowercase()),
    };
    let category_id = match query.category_id.as_deref() {
        None => None,
        Some(c) => checks.check("category_id", validate::id(c)),
    };
    let starts_from = query
        .starts_from
        .as_deref()
        .and_then(|t| checks.check("starts_from", validate::time(t)));
    let starts_to = query
        .starts_to
        .as_deref()
        .and_then(|t| checks.check("starts_to", validate::time(t)));
    let limit = checks.check(
        "limit",
        validate::range(
            query.limit.unwrap_or(DEFAULT_PAGE_SIZE as i64),
            1,
            MAX_PAGE_SIZE as i64,
        ),
    );
    checks.finish()?;
    let filter = Filter {
        text,
        category_id,
        free: query.free,
        starts_from,
        starts_to,
        price_min: query.price_min,
        price_max: query.price_max,
        only_available: query.available.unwrap_or(false),
    };
    let sort = query.sort.unwrap_or_default();
    let descending = query.order.unwrap_or_default() == SortOrder::Desc;
    let list = {
        let identity = serde_json::to_vec(&(&filter, sort, descending)).unwrap_or_default();
        let digest = Sha256::digest(&identity);
        format!("events:{}", hex::encode(&digest[..12]))
    };
    let tokens = PageTokens {
        page_token: query.page_token.as_deref(),
        next_token: query.next_token.as_deref(),
        previous_token: query.previous_token.as_deref(),
    };
    let position: Option<(Direction, EventCursor)> = state.pager.position(&list, &tokens)?;
    let limit = usize::try_from(limit.unwrap_or(20)).unwrap_or(DEFAULT_PAGE_SIZE);
    let events = state.catalogue.all(state.stores.catalog.as_ref()).await?;
    let available = |e: &EventRecord| {
        live_availability(&state, &e.id)
            .unwrap_or_else(|| initial_availability(e))
            .available
    };
    let direction = position.as_ref().map(|(d, _)| *d);
    let came_from = position.as_ref().map(|(_, c)| c.clone());
    let page = catalogue::search(
        &events, &filter, available, sort, descending, position, limit,
    );
    let cursor = |e: &EventRecord| catalogue::cursor_of(e, sort);
    let (has_next, has_previous) = match direction {
        None => (page.more, false),
        Some(Direction::Next) => (page.more, true),
        Some(Direction::Previous) => (true, page.more),
    };
    let first = page
        .items
        .first()
        .map(|(e, _)| cursor(e))
        .or_else(|| came_from.clone());
    let last = page.items.last().map(|(e, _)| cursor(e)).or(came_from);
    let next_token = has_next
        .then_some(last)
        .flatten()
        .map(|c| state.pager.sign(&list, Direction::Next, &c));
    let previous_token = has_previous
        .then_some(first)
        .flatten()
        .map(|c| state.pager.sign(&list, Direction::Previous, &c));
    let items = page
        .items
        .iter()
        .map(|(e, _)| {
            EventView::new(
                e,
                live_availability(&state, &e.id).unwrap_or_else(|| initial_availability(e)),
            )
        })
        .collect();
    Ok(Json(PageOf {
        items,
        next_token,
        previous_token,
    }))
}

/// One event, with its current availability.
#[utoipa::path(get, path = "/v1/tickets/{id}", tag = "events",
    params(("id" = String, Path, description = "Event id")),
    responses(
        (status = 200, description = "The event", body = EventView),
        NoSuchEvent,
    ))]
pub async fn get_event(
    State(state): State<SharedState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<EventView>> {
    let event = find_event(&state, &id).await?;
    let availability = availability_of(&state, &event).await?;
    Ok(Json(EventView::new(&event, availability)))
}

pub async fn find_event(state: &SharedState, id: &str) -> ApiResult<EventRecord> {
    let not_found = || ApiError::NotFound("no such event".to_owned());
    let id = validate::id(id).map_err(|_| not_found())?;
    state
        .catalogue
        .get(state.stores.catalog.as_ref(), &id)
        .await?
        .ok_or_else(not_found)
}

/// What an organiser sets for an event.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventInput {
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    #[serde(default)]
    #[schema(max_length = 5000)]
    pub description: String,
    #[serde(default)]
    #[schema(max_length = 200)]
    pub venue: String,
    #[schema(format = Uuid)]
    pub category_id: Option<String>,
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub starts_at: String,
    /// Price of one slot in minor units; 0 makes the event free.
    #[schema(minimum = 0, maximum = 10_000_000_000_i64)]
    pub price_minor: i64,
    #[schema(example = "EUR", pattern = "^[A-Z]{3}$")]
    pub currency: String,
    #[schema(minimum = 0, maximum = 1_000_000)]
    pub capacity: i64,
    /// RFC 3339; bookings are accepted from here (inclusive) ...
    #[schema(format = DateTime)]
    pub sale_starts_at: String,
    /// ... until here (exclusive).
    #[schema(format = DateTime)]
    pub sale_ends_at: String,
    /// How long a reservation holds its slots unpaid (30 to 86400; default 300).
    #[schema(minimum = 30, maximum = 86_400)]
    pub hold_seconds: Option<i64>,
    /// Slots one order may take; 0: no limit. Default 6 (a flash sale's limit).
    #[schema(minimum = 0, maximum = 1000)]
    pub max_per_order: Option<i64>,
    /// Slots one account may hold in all; 0: no limit. Default 6.
    #[schema(minimum = 0, maximum = 100_000)]
    pub max_per_user: Option<i64>,
}

/// What an event gets when the organiser leaves a limit out: what a flash sale wants, so that
/// one script cannot hold the sale (issue 13). They are written into the event itself (its
/// row and `EventUpserted`); the booking core never defaults them, so old logs re-fold the
/// same. `0`, given explicitly, still means no limit.
pub const DEFAULT_MAX_PER_ORDER: i64 = 6;
/// See [`DEFAULT_MAX_PER_ORDER`].
pub const DEFAULT_MAX_PER_USER: i64 = 6;
/// How long an unpaid reservation holds its slots by default (5 minutes).
pub const DEFAULT_HOLD_SECONDS: i64 = 300;

async fn validated_event(
    state: &SharedState,
    body: &EventInput,
    id: String,
    created_at: i64,
) -> ApiResult<EventRecord> {
    let mut c = Checks::new();
    let name = c.check("name", validate::text(&body.name, 1, 200));
    let description = c.check("description", validate::long_text(&body.description, 5000));
    let venue = c.check("venue", validate::text(&body.venue, 0, 200));
    let category_id = match body.category_id.as_deref() {
        None | Some("") => Some(None),
        Some(cat) => c.check("category_id", validate::id(cat)).map(Some),
    };
    let starts_at = c.check("starts_at", validate::time(&body.starts_at));
    let price = c.check(
        "price_minor",
        validate::range(body.price_minor, 0, 10_000_000_000),
    );
    let currency = c.check("currency", validate::currency(&body.currency));
    let capacity = c.check("capacity", validate::range(body.capacity, 0, 1_000_000));
    let sale_starts_at = c.check("sale_starts_at", validate::time(&body.sale_starts_at));
    let sale_ends_at = c.check("sale_ends_at", validate::time(&body.sale_ends_at));
    let hold = c.check(
        "hold_seconds",
        validate::range(
            body.hold_seconds.unwrap_or(DEFAULT_HOLD_SECONDS),
            30,
            86_400,
        ),
    );
    let per_order = c.check(
        "max_per_order",
        validate::range(body.max_per_order.unwrap_or(DEFAULT_MAX_PER_ORDER), 0, 1000),
    );
    let per_user = c.check(
        "max_per_user",
        validate::range(
            body.max_per_user.unwrap_or(DEFAULT_MAX_PER_USER),
            0,
            100_000,
        ),
    );
    if let (Some(start), Some(end)) = (sale_starts_at, sale_ends_at)
        && end <= start
    {
        c.fail("sale_ends_at", "must be after sale_starts_at");
    }
    c.finish()?;
    let (
        Some(name),
        Some(description),
        Some(venue),
        Some(category_id),
        Some(starts_at),
        Some(price),
        Some(currency),
    ) = (
        name,
        description,
        venue,
        category_id,
        starts_at,
        price,
        currency,
    )
    else {
        return Err(ApiError::Internal(
            "validation passed without values".to_owned(),
        ));
    };
    let (
        Some(capacity),
        Some(sale_starts_at),
        Some(sale_ends_at),
        Some(hold),
        Some(per_order),
        Some(per_user),
    ) = (
        capacity,
        sale_starts_at,
        sale_ends_at,
        hold,
        per_order,
        per_user,
    )
    else {
        return Err(ApiError::Internal(
            "validation passed without values".to_owned(),
        ));
    };
    if let Some(category_id) = &category_id {
        let Some(category) = state.stores.catalog.get_category(category_id).await? else {
            return Err(ApiError::field("category_id", "no such category"));
        };
        if category.is_free && price > 0 {
            return Err(ApiError::field(
                "price_minor",
                "must be 0 in a free category",
            ));
        }
    }
    let narrow = |v: i64| i32::try_from(v).map_err(|_| ApiError::field("capacity", "out of range"));
    Ok(EventRecord {
        id,
        name,
        description,
        venue,
        category_id,
        starts_at,
        price_minor: price,
        currency,
        capacity: narrow(capacity)?,
        sale_starts_at,
        sale_ends_at,
        hold_seconds: narrow(hold)?,
        max_per_order: narrow(per_order)?,
        max_per_user: narrow(per_user)?,
        created_at,
        updated_at: crate::now_millis(),
    })
}

/// Writes the catalogue row, then tells the booking processor (`EventUpserted`).
async fn save_event(state: &SharedState, event: &EventRecord) -> ApiResult<()> {
    state.stores.catalog.put_event(event).await?;
    state.catalogue.invalidate();
    let updated_at = event.updated_at.to_string();
    let command = BookingCommand::EventUpserted(EventUpserted {
        record_id: ids::record_id_for::<EventUpserted>(&[&event.id, &updated_at]),
        event_id: event.id.clone(),
        name: event.name.clone(),
        category_id: event.category_id.clone(),
        capacity: event.capacity,
        price_minor: event.price_minor,
        currency: event.currency.clone(),
        sale_starts_at: event.sale_starts_at,
        sale_ends_at: event.sale_ends_at,
        hold_seconds: event.hold_seconds,
        max_per_order: event.max_per_order,
        max_per_user: event.max_per_user,
        occurred_at: event.updated_at,
    });
    state.bus.send_command(&command).await.map_err(|e| {
        tracing::warn!(error = %e, event_id = %event.id, "EventUpserted not produced");
        ApiError::unavailable(
            "the event was saved but the booking pipeline is unavailable; repeat the request",
        )
    })
}

/// Creates an event (admin).
#[utoipa::path(post, path = "/v1/tickets", tag = "events", request_body = EventInput, security(("bearer" = [])),
    responses(
        (status = 201, description = "Created", body = EventView),
        NotSignedIn,
        NotAdmin,
        InvalidFields,
        KafkaUnavailable,
    ))]
pub async fn create_event(
    State(state): State<SharedState>,
    _admin: AdminUser,
    ApiJson(body): ApiJson<EventInput>,
) -> ApiResult<(StatusCode, Json<EventView>)> {
    let now = crate::now_millis();
    let event = validated_event(&state, &body, uuid::Uuid::new_v4().to_string(), now).await?;
    save_event(&state, &event).await?;
    Ok((
        StatusCode::CREATED,
        Json(EventView::new(&event, initial_availability(&event))),
    ))
}

/// Changes an event (admin): capacity, price, sale window, hold time, limits, texts.
#[utoipa::path(put, path = "/v1/tickets/{id}", tag = "events", request_body = EventInput, security(("bearer" = [])),
    params(("id" = String, Path, description = "Event id")),
    responses(
        (status = 200, description = "Updated", body = EventView),
        NotSignedIn,
        NotAdmin,
        NoSuchEvent,
        InvalidFields,
        KafkaUnavailable,
    ))]
pub async fn update_event(
    State(state): State<SharedState>,
    _admin: AdminUser,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<EventInput>,
) -> ApiResult<Json<EventView>> {
    let current = find_event(&state, &id).await?;
    let mut event = validated_event(&state, &body, current.id.clone(), current.created_at).await?;
    // Strictly after the previous edit, so the processor never takes this one as older.
    event.updated_at = event.updated_at.max(current.updated_at + 1);
    save_event(&state, &event).await?;
    let availability = availability_of(&state, &event).await?;
    Ok(Json(EventView::new(&event, availability)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CategoryInput {
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
    /// Events of a free category must have price 0.
    pub is_free: bool,
}

/// Every category, by name.
#[utoipa::path(get, path = "/v1/categories", tag = "events",
    responses((status = 200, description = "Categories", body = CategoryList)))]
pub async fn list_categories(State(state): State<SharedState>) -> ApiResult<Json<CategoryList>> {
    let categories = state.stores.catalog.list_categories().await?;
    Ok(Json(CategoryList {
        items: categories.iter().map(CategoryView::from).collect(),
    }))
}

fn validated_category(body: &CategoryInput, id: String) -> ApiResult<CategoryRecord> {
    let name = validate::text(&body.name, 1, 100).map_err(|m| ApiError::field("name", m))?;
    Ok(CategoryRecord {
        id,
        name,
        is_free: body.is_free,
    })
}

/// Creates a category (admin).
#[utoipa::path(post, path = "/v1/categories", tag = "events", request_body = CategoryInput, security(("bearer" = [])),
    responses(
        (status = 201, description = "Created", body = CategoryView),
        NotSignedIn,
        NotAdmin,
        InvalidFields,
    ))]
pub async fn create_category(
    State(state): State<SharedState>,
    _admin: AdminUser,
    ApiJson(body): ApiJson<CategoryInput>,
) -> ApiResult<(StatusCode, Json<CategoryView>)> {
    let category = validated_category(&body, uuid::Uuid::new_v4().to_string())?;
    state.stores.catalog.put_category(&category).await?;
    Ok((StatusCode::CREATED, Json(CategoryView::from(&category))))
}

/// Renames a category or changes free/paid (admin).
#[utoipa::path(put, path = "/v1/categories/{id}", tag = "events", request_body = CategoryInput, security(("bearer" = [])),
    params(("id" = String, Path, description = "Category id")),
    responses(
        (status = 200, description = "Updated", body = CategoryView),
        NotSignedIn,
        NotAdmin,
        (status = 404, description = "No such category", body = Problem, content_type = "application/problem+json"),
        InvalidFields,
    ))]
pub async fn update_category(
    State(state): State<SharedState>,
    _admin: AdminUser,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<CategoryInput>,
) -> ApiResult<Json<CategoryView>> {
    let not_found = || ApiError::NotFound("no such category".to_owned());
    let id = validate::id(&id).map_err(|_| not_found())?;
    state
        .stores
        .catalog
        .get_category(&id)
        .await?
        .ok_or_else(not_found)?;
    let category = validated_category(&body, id)?;
    state.stores.catalog.put_category(&category).await?;
    Ok(Json(CategoryView::from(&category)))
}
