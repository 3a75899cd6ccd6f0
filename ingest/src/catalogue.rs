//! The events catalogue as ingest serves it: a short-lived in-memory copy of the `events`
//! table (a full scan, refreshed every [`CATALOGUE_TTL`] and after every local edit), and the
//! pure search over it: text, category, free or paid, date and price ranges, only-available,
//! sorting and cursor pages in both directions. A full scan filtered in memory is right at
//! catalogue sizes (thousands of events); a search index is the next step beyond that.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::stores::{CatalogStore, Direction, EventRecord, Millis, StoreResult};

/// How long a scan of `events` is reused. An edit on another replica shows in searches here
/// after at most this long; lookups by id miss the cache and read the store.
pub const CATALOGUE_TTL: Duration = Duration::from_secs(2);

/// Events looked up by id kept at most this many (a flash sale needs one).
const BY_ID_CAPACITY: usize = 10_000;

/// The cached catalogue.
#[derive(Debug, Default)]
pub struct Catalogue {
    cache: Mutex<Option<(Instant, Arc<Vec<EventRecord>>)>>,
    /// Events read one by one (the order path), each for [`CATALOGUE_TTL`].
    by_id: Mutex<HashMap<String, (Instant, EventRecord)>>,
}

impl Catalogue {
    /// Every event, from the cache when it is fresh.
    pub async fn all(&self, store: &dyn CatalogStore) -> StoreResult<Arc<Vec<EventRecord>>> {
        if let Ok(cache) = self.cache.lock()
            && let Some((at, events)) = cache.as_ref()
            && at.elapsed() < CATALOGUE_TTL
        {
            return Ok(Arc::clone(events));
        }
        let events = Arc::new(store.list_events().await?);
        if let Ok(mut cache) = self.cache.lock() {
            *cache = Some((Instant::now(), Arc::clone(&events)));
        }
        Ok(events)
    }

    /// One event: from a fresh cache when it has it, else from the store (then cached for
    /// [`CATALOGUE_TTL`], so a hot event costs the order path no store read). Unknown ids are
    /// not cached: an event created on another replica is found at once.
    pub async fn get(
        &self,
        store: &dyn CatalogStore,
        id: &str,
    ) -> StoreResult<Option<EventRecord>> {
        if let Ok(by_id) = self.by_id.lock()
            && let Some((at, event)) = by_id.get(id)
            && at.elapsed() < CATALOGUE_TTL
        {
            return Ok(Some(event.clone()));
        }
        if let Ok(cache) = self.cache.lock()
            && let Some((at, events)) = cache.as_ref()
            && at.elapsed() < CATALOGUE_TTL
            && let Some(event) = events.iter().find(|e| e.id == id)
        {
            return Ok(Some(event.clone()));
        }
        let event = store.get_event(id).await?;
        if let Some(event) = &event
            && let Ok(mut by_id) = self.by_id.lock()
        {
            if by_id.len() >= BY_ID_CAPACITY {
                by_id.retain(|_, (at, _)| at.elapsed() < CATALOGUE_TTL);
                if by_id.len() >= BY_ID_CAPACITY {
                    by_id.clear();
                }
            }
            by_id.insert(id.to_owned(), (Instant::now(), event.clone()));
        }
        Ok(event)
    }

    /// Forgets what is cached (after an edit).
    pub fn invalidate(&self) {
        if let Ok(mut cache) = self.cache.lock() {
            *cache = None;
        }
        if let Ok(mut by_id) = self.by_id.lock() {
            by_id.clear();
        }
    }
}

/// What a search keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Filter {
    /// Lower-cased text looked for in name, description and venue.
    pub text: Option<String>,
    pub category_id: Option<String>,
    /// `Some(true)`: free events only; `Some(false)`: paid only.
    pub free: Option<bool>,
    pub starts_from: Option<Millis>,
    pub starts_to: Option<Millis>,
    pub price_min: Option<i64>,
    pub price_max: Option<i64>,
    pub only_available: bool,
}

impl Filter {
    pub fn keeps(&self, event: &EventRecord, available: i64) -> bool {
        if let Some(text) = &self.text {
            let hit = [&event.name, &event.description, &event.venue]
                .iter()
                .any(|field| field.to_lowercase().contains(text.as_str()));
            if !hit {
                return false;
            }
        }
        if let Some(category) = &self.category_id
            && event.category_id.as_deref() != Some(category.as_str())
        {
            return false;
        }
        if let Some(free) = self.free
            && (event.price_minor == 0) != free
        {
            return false;
        }
        let in_range = |value: i64, min: Option<i64>, max: Option<i64>| {
            min.is_none_or(|m| value >= m) && max.is_none_or(|m| value <= m)
        };
        in_range(event.starts_at, self.starts_from, self.starts_to)
            && in_range(event.price_minor, self.price_min, self.price_max)
            && (!self.only_available || available > 0)
    }
}

/// What a search sorts by.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SortField {
    #[default]
    StartsAt,
    Name,
    Price,
    CreatedAt,
}

/// A sort value in a cursor.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SortValue {
    Int(i64),
    Text(String),
}

/// A position in a sorted search: the sort value and the id of an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventCursor {
    pub k: SortValue,
    pub i: String,
}

fn sort_value(event: &EventRecord, field: SortField) -> SortValue {
    match field {
        SortField::StartsAt => SortValue::Int(event.starts_at),
        SortField::Name => SortValue::Text(event.name.to_lowercase()),
        SortField::Price => SortValue::Int(event.price_minor),
        SortField::CreatedAt => SortValue::Int(event.created_at),
    }
}

pub fn cursor_of(event: &EventRecord, field: SortField) -> EventCursor {
    EventCursor {
        k: sort_value(event, field),
        i: event.id.clone(),
    }
}

/// One page of a search: events in display order, and whether more lie beyond in the
/// direction read.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchPage<'a> {
    pub items: Vec<(&'a EventRecord, i64)>,
    pub more: bool,
}

/// Filters, sorts and cuts one page out of `events`. `available(event)` is its current number
/// of free slots.
pub fn search<'a>(
    events: &'a [EventRecord],
    filter: &Filter,
    available: impl Fn(&EventRecord) -> i64,
    sort: SortField,
    descending: bool,
    position: Option<(Direction, EventCursor)>,
    limit: usize,
) -> SearchPage<'a> {
    let order = |a: &EventCursor, b: &EventCursor| {
        let o = a.k.cmp(&b.k).then_with(|| a.i.cmp(&b.i));
        if descending { o.reverse() } else { o }
    };
    let mut hits: Vec<(EventCursor, &EventRecord, i64)> = events
        .iter()
        .filter_map(|e| {
            let free = available(e);
            filter.keeps(e, free).then(|| (cursor_of(e, sort), e, free))
        })
        .collect();
    hits.sort_by(|a, b| order(&a.0, &b.0));
    let limit = limit.max(1);
    match position {
        None => {
            let more = hits.len() > limit;
            SearchPage {
                items: hits
                    .into_iter()
                    .take(limit)
                    .map(|(_, e, a)| (e, a))
                    .collect(),
                more,
            }
        }
        Some((Direction::Next, cursor)) => {
            let after: Vec<_> = hits
                .into_iter()
                .filter(|(c, _, _)| order(c, &cursor) == Ordering::Greater)
                .collect();
            let more = after.len() > limit;
            SearchPage {
                items: after
                    .into_iter()
                    .take(limit)
                    .map(|(_, e, a)| (e, a))
                    .collect(),
                more,
            }
        }
        Some((Direction::Previous, cursor)) => {
            let before: Vec<_> = hits
                .into_iter()
                .filter(|(c, _, _)| order(c, &cursor) == Ordering::Less)
                .collect();
            let more = before.len() > limit;
            let skip = before.len().saturating_sub(limit);
            SearchPage {
                items: before
                    .into_iter()
                    .skip(skip)
                    .map(|(_, e, a)| (e, a))
                    .collect(),
                more,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(i: i64, name: &str, price: i64) -> EventRecord {
        EventRecord {
            id: format!("e{i:02}"),
            name: name.into(),
            description: "An evening".into(),
            venue: "Hall".into(),
            category_id: Some(if price == 0 { "free" } else { "paid" }.into()),
            starts_at: 1000 + i,
            price_minor: price,
            currency: "EUR".into(),
            capacity: 10,
            sale_starts_at: 0,
            sale_ends_at: 10,
            hold_seconds: 600,
            max_per_order: 0,
            max_per_user: 0,
            created_at: i,
            updated_at: i,
        }
    }

    #[test]
    fn filters_keep_what_they_say() {
        let events: Vec<_> = (0..10)
            .map(|i| event(i, &format!("Gig {i}"), i * 100))
            .collect();
        let filter = Filter {
            text: Some("gig 3".into()),
            ..Filter::default()
        };
        let page = search(
            &events,
            &filter,
            |_| 1,
            SortField::StartsAt,
            false,
            None,
            10,
        );
        assert_eq!(page.items.len(), 1);
        let free = Filter {
            free: Some(true),
            ..Filter::default()
        };
        assert_eq!(
            search(&events, &free, |_| 1, SortField::StartsAt, false, None, 10)
                .items
                .len(),
            1
        );
        let range = Filter {
            price_min: Some(200),
            price_max: Some(400),
            ..Filter::default()
        };
        assert_eq!(
            search(&events, &range, |_| 1, SortField::Price, true, None, 10)
                .items
                .len(),
            3
        );
        let available = Filter {
            only_available: true,
            ..Filter::default()
        };
        let page = search(
            &events,
            &available,
            |e| i64::from(e.id != "e01"),
            SortField::StartsAt,
            false,
            None,
            20,
        );
        assert_eq!(page.items.len(), 9);
    }

    #[test]
    fn pages_go_both_ways_without_overlap_or_gaps() {
        let events: Vec<_> = (0..25).map(|i| event(i, "Gig", 100)).collect();
        let all = Filter::default();
        let first = search(&events, &all, |_| 1, SortField::StartsAt, true, None, 10);
        assert!(first.more);
        let last_of_first = cursor_of(first.items[9].0, SortField::StartsAt);
        let second = search(
            &events,
            &all,
            |_| 1,
            SortField::StartsAt,
            true,
            Some((Direction::Next, last_of_first)),
            10,
        );
        assert_eq!(second.items[0].0.id, "e14");
        let third = search(
            &events,
            &all,
            |_| 1,
            SortField::StartsAt,
            true,
            Some((
                Direction::Next,
                cursor_of(second.items[9].0, SortField::StartsAt),
            )),
            10,
        );
        assert_eq!(third.items.len(), 5);
        assert!(!third.more);
        let back = search(
            &events,
            &all,
            |_| 1,
            SortField::StartsAt,
            true,
            Some((
                Direction::Previous,
                cursor_of(third.items[0].0, SortField::StartsAt),
            )),
            10,
        );
        assert_eq!(
            back.items
                .iter()
                .map(|(e, _)| e.id.clone())
                .collect::<Vec<_>>(),
            second
                .items
                .iter()
                .map(|(e, _)| e.id.clone())
                .collect::<Vec<_>>()
        );
        assert!(back.more);
    }
}
