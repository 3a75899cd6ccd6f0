//! In-memory stores and a recording bus, for the router tests only (never in a build): the
//! same traits the CQL stores implement, kept as plain maps behind one mutex.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use boxoffice_avro::{BookingCommand, PaymentRequest};

use crate::bus::{Bus, BusError};
use crate::stores::*;

#[derive(Default)]
struct Data {
    emails: HashMap<String, String>,
    names: HashMap<String, String>,
    hashes: HashMap<String, (String, Role)>,
    users: HashMap<String, UserRecord>,
    refresh: HashMap<String, RefreshRecord>,
    revoked: HashMap<String, bool>,
    events: HashMap<String, EventRecord>,
    categories: HashMap<String, CategoryRecord>,
    orders: HashMap<String, OrderRecord>,
    decisions: HashMap<String, OrderDecision>,
    payments: HashMap<String, PaymentRecord>,
    notifications: Vec<NotificationRecord>,
    /// By (user id, endpoint id).
    endpoints: HashMap<(String, String), WebhookEndpointRecord>,
    provider_events: HashMap<String, ProviderEventRecord>,
}

/// Every store, in memory.
#[derive(Default, Clone)]
pub struct Memory {
    data: Arc<Mutex<Data>>,
}

impl Memory {
    pub fn stores(&self) -> Stores {
        let all = Arc::new(self.clone());
        Stores {
            accounts: all.clone(),
            catalog: all.clone(),
            orders: all.clone(),
            payments: all.clone(),
            notifications: all.clone(),
            webhooks: all.clone(),
            provider_events: all.clone(),
            probe: all,
        }
    }

    /// Stores an order's row, as the booking processor does once it decided the order.
    pub fn insert_order(&self, order: OrderRecord) {
        self.data
            .lock()
            .unwrap()
            .orders
            .insert(order.id.clone(), order);
    }

    pub fn set_decision(&self, order_id: &str, decision: OrderDecision) {
        self.data
            .lock()
            .unwrap()
            .decisions
            .insert(order_id.to_owned(), decision);
    }

    pub fn put_notification(&self, notification: NotificationRecord) {
        self.data.lock().unwrap().notifications.push(notification);
    }

    /// What the notifier does on a 410 Gone.
    pub fn disable_endpoint(&self, user_id: &str, endpoint_id: &str, reason: &str, at: Millis) {
        let mut d = self.data.lock().unwrap();
        if let Some(e) = d
            .endpoints
            .get_mut(&(user_id.to_owned(), endpoint_id.to_owned()))
        {
            e.disabled = true;
            e.disabled_reason = Some(reason.to_owned());
            e.disabled_at = Some(at);
        }
    }

    /// The stored endpoint, secret included.
    pub fn endpoint(&self, user_id: &str, endpoint_id: &str) -> Option<WebhookEndpointRecord> {
        self.data
            .lock()
            .unwrap()
            .endpoints
            .get(&(user_id.to_owned(), endpoint_id.to_owned()))
            .cloned()
    }

    pub fn provider_event(&self, id: &str) -> Option<ProviderEventRecord> {
        self.data.lock().unwrap().provider_events.get(id).cloned()
    }

    pub fn put_event_now(&self, event: EventRecord) {
        self.data
            .lock()
            .unwrap()
            .events
            .insert(event.id.clone(), event);
    }
}

fn newest_first<T: Clone>(mut items: Vec<(TimeCursor, T)>, page: &PageRequest) -> Page<T> {
    items.sort_by(|a, b| (b.0.at, &b.0.id).cmp(&(a.0.at, &a.0.id)));
    let filtered: Vec<(TimeCursor, T)> = match (&page.cursor, page.direction) {
        (None, _) => items,
        (Some(c), Direction::Next) => items
            .into_iter()
            .filter(|(k, _)| (k.at, &k.id) < (c.at, &c.id))
            .collect(),
        (Some(c), Direction::Previous) => items
            .into_iter()
            .filter(|(k, _)| (k.at, &k.id) > (c.at, &c.id))
            .collect(),
    };
    let more = filtered.len() > page.limit;
    let chosen: Vec<T> = if page.cursor.is_some() && page.direction == Direction::Previous {
        let skip = filtered.len().saturating_sub(page.limit);
        filtered.into_iter().skip(skip).map(|(_, t)| t).collect()
    } else {
        filtered
            .into_iter()
            .take(page.limit)
            .map(|(_, t)| t)
            .collect()
    };
    Page {
        items: chosen,
        more,
    }
}

fn credentials(d: &Data, id: &str) -> Option<Credentials> {
    d.hashes.get(id).map(|(hash, role)| Credentials {
        user_id: id.to_owned(),
        password_hash: hash.clone(),
        role: d.users.get(id).map_or(*role, |u| u.role),
        email_verified: d.users.get(id).is_some_and(|u| u.email_verified),
    })
}

#[async_trait]
impl AccountStore for Memory {
    async fn create_account(&self, a: &NewAccount) -> Result<(), CreateAccountError> {
        let mut d = self.data.lock().unwrap();
        if d.emails.contains_key(&a.email) {
            return Err(CreateAccountError::EmailTaken);
        }
        if d.names.contains_key(&a.user_name) {
            return Err(CreateAccountError::UserNameTaken);
        }
        d.emails.insert(a.email.clone(), a.user_id.clone());
        d.names.insert(a.user_name.clone(), a.user_id.clone());
        d.hashes
            .insert(a.user_id.clone(), (a.password_hash.clone(), a.role));
        d.users.insert(
            a.user_id.clone(),
            UserRecord {
                id: a.user_id.clone(),
                email: a.email.clone(),
                user_name: a.user_name.clone(),
                first_name: a.first_name.clone(),
                last_name: a.last_name.clone(),
                birth_day: None,
                mobile_phone: a.mobile_phone.clone(),
                role: a.role,
                email_verified: a.email_verified_at.is_some(),
                password_changed_at: None,
                created_at: a.created_at,
                updated_at: a.created_at,
            },
        );
        Ok(())
    }

    async fn find_credentials(&self, login: &str) -> StoreResult<Option<Credentials>> {
        let d = self.data.lock().unwrap();
        let id = if login.contains('@') {
            d.emails.get(login)
        } else {
            d.names.get(login)
        };
        Ok(id.and_then(|id| credentials(&d, id)))
    }

    async fn credentials_of(&self, user_id: &str) -> StoreResult<Option<Credentials>> {
        Ok(credentials(&self.data.lock().unwrap(), user_id))
    }

    async fn set_email_verified(&self, user_id: &str, _at: Millis) -> StoreResult<()> {
        if let Some(u) = self.data.lock().unwrap().users.get_mut(user_id) {
            u.email_verified = true;
        }
        Ok(())
    }

    async fn set_password_hash(
        &self,
        user_id: &str,
        password_hash: &str,
        at: Millis,
    ) -> StoreResult<()> {
        let mut d = self.data.lock().unwrap();
        if let Some(entry) = d.hashes.get_mut(user_id) {
            entry.0 = password_hash.to_owned();
        }
        if let Some(u) = d.users.get_mut(user_id) {
            u.password_changed_at = Some(at);
        }
        Ok(())
    }

    async fn user_id_by_email(&self, email: &str) -> StoreResult<Option<String>> {
        Ok(self.data.lock().unwrap().emails.get(email).cloned())
    }

    async fn set_role(&self, user_id: &str, role: Role) -> StoreResult<()> {
        if let Some(u) = self.data.lock().unwrap().users.get_mut(user_id) {
            u.role = role;
        }
        Ok(())
    }

    async fn get_user(&self, user_id: &str) -> StoreResult<Option<UserRecord>> {
        Ok(self.data.lock().unwrap().users.get(user_id).cloned())
    }

    async fn update_user(
        &self,
        current: &UserRecord,
        u: &UserUpdate,
    ) -> Result<(), UpdateUserError> {
        let mut d = self.data.lock().unwrap();
        if u.user_name != current.user_name {
            if d.names.contains_key(&u.user_name) {
                return Err(UpdateUserError::UserNameTaken);
            }
            d.names.remove(&current.user_name);
            d.names.insert(u.user_name.clone(), current.id.clone());
        }
        if let Some(user) = d.users.get_mut(&current.id) {
            user.user_name = u.user_name.clone();
            user.first_name = u.first_name.clone();
            user.last_name = u.last_name.clone();
            user.birth_day = u.birth_day;
            user.mobile_phone = u.mobile_phone.clone();
            user.updated_at = u.updated_at;
        }
        Ok(())
    }

    async fn list_users(&self, page: &PageRequest) -> StoreResult<Page<UserRecord>> {
        let d = self.data.lock().unwrap();
        let items = d
            .users
            .values()
            .map(|u| {
                (
                    TimeCursor {
                        at: u.created_at,
                        id: u.id.clone(),
                    },
                    u.clone(),
                )
            })
            .collect();
        Ok(newest_first(items, page))
    }

    async fn insert_refresh(&self, r: &RefreshRecord) -> StoreResult<()> {
        self.data
            .lock()
            .unwrap()
            .refresh
            .insert(r.token_hash.clone(), r.clone());
        Ok(())
    }

    async fn get_refresh(&self, hash: &str) -> StoreResult<Option<RefreshRecord>> {
        Ok(self.data.lock().unwrap().refresh.get(hash).cloned())
    }

    async fn consume_refresh(&self, hash: &str) -> StoreResult<bool> {
        let mut d = self.data.lock().unwrap();
        Ok(match d.refresh.get_mut(hash) {
            Some(r) if !r.used => {
                r.used = true;
                true
            }
            _ => false,
        })
    }

    async fn revoke_family(&self, family: &str, _at: Millis) -> StoreResult<()> {
        self.data
            .lock()
            .unwrap()
            .revoked
            .insert(family.to_owned(), true);
        Ok(())
    }

    async fn family_revoked(&self, family: &str) -> StoreResult<bool> {
        Ok(self.data.lock().unwrap().revoked.contains_key(family))
    }
}

#[async_trait]
impl CatalogStore for Memory {
    async fn list_events(&self) -> StoreResult<Vec<EventRecord>> {
        Ok(self.data.lock().unwrap().events.values().cloned().collect())
    }
    async fn get_event(&self, id: &str) -> StoreResult<Option<EventRecord>> {
        Ok(self.data.lock().unwrap().events.get(id).cloned())
    }
    async fn put_event(&self, e: &EventRecord) -> StoreResult<()> {
        self.data
            .lock()
            .unwrap()
            .events
            .insert(e.id.clone(), e.clone());
        Ok(())
    }
    async fn inventory(&self, _: &str) -> StoreResult<Option<InventoryCounters>> {
        Ok(None)
    }
    async fn list_categories(&self) -> StoreResult<Vec<CategoryRecord>> {
        Ok(self
            .data
            .lock()
            .unwrap()
            .categories
            .values()
            .cloned()
            .collect())
    }
    async fn get_category(&self, id: &str) -> StoreResult<Option<CategoryRecord>> {
        Ok(self.data.lock().unwrap().categories.get(id).cloned())
    }
    async fn put_category(&self, c: &CategoryRecord) -> StoreResult<()> {
        self.data
            .lock()
            .unwrap()
            .categories
            .insert(c.id.clone(), c.clone());
        Ok(())
    }
}

#[async_trait]
impl OrderStore for Memory {
    async fn get_order(&self, id: &str) -> StoreResult<Option<OrderRecord>> {
        Ok(self.data.lock().unwrap().orders.get(id).cloned())
    }
    async fn list_orders(&self, user: &str, page: &PageRequest) -> StoreResult<Page<OrderRecord>> {
        let d = self.data.lock().unwrap();
        let items = d
            .orders
            .values()
            .filter(|o| o.user_id == user)
            .map(|o| {
                (
                    TimeCursor {
                        at: o.created_at,
                        id: o.id.clone(),
                    },
                    o.clone(),
                )
            })
            .collect();
        Ok(newest_first(items, page))
    }
    async fn decision(&self, _: &str, order_id: &str) -> StoreResult<Option<OrderDecision>> {
        Ok(self.data.lock().unwrap().decisions.get(order_id).cloned())
    }
}

#[async_trait]
impl PaymentStore for Memory {
    async fn record_submission(&self, p: &PaymentRecord) -> StoreResult<()> {
        self.data
            .lock()
            .unwrap()
            .payments
            .insert(p.id.clone(), p.clone());
        Ok(())
    }
    async fn get_payment(&self, id: &str) -> StoreResult<Option<PaymentRecord>> {
        Ok(self.data.lock().unwrap().payments.get(id).cloned())
    }
    async fn history(&self, _: &str) -> StoreResult<Vec<PaymentHistoryEntry>> {
        Ok(Vec::new())
    }
    async fn list_payments(
        &self,
        user: &str,
        page: &PageRequest,
    ) -> StoreResult<Page<PaymentRecord>> {
        let d = self.data.lock().unwrap();
        let items = d
            .payments
            .values()
            .filter(|p| p.user_id == user)
            .map(|p| {
                (
                    TimeCursor {
                        at: p.created_at,
                        id: p.id.clone(),
                    },
                    p.clone(),
                )
            })
            .collect();
        Ok(newest_first(items, page))
    }
}

#[async_trait]
impl NotificationStore for Memory {
    async fn mark_read(&self, user: &str, id: &str) -> StoreResult<bool> {
        let mut d = self.data.lock().unwrap();
        let found = d
            .notifications
            .iter_mut()
            .find(|n| n.user_id == user && n.id == id);
        Ok(found.map(|n| n.read = true).is_some())
    }

    async fn mark_all_read(&self, user: &str) -> StoreResult<usize> {
        let mut d = self.data.lock().unwrap();
        let unread = d
            .notifications
            .iter_mut()
            .filter(|n| n.user_id == user && !n.read);
        Ok(unread.map(|n| n.read = true).count())
    }

    async fn list_notifications(
        &self,
        user: &str,
        page: &PageRequest,
    ) -> StoreResult<Page<NotificationRecord>> {
        let d = self.data.lock().unwrap();
        let items = d
            .notifications
            .iter()
            .filter(|n| n.user_id == user)
            .map(|n| {
                (
                    TimeCursor {
                        at: n.created_at,
                        id: n.id.clone(),
                    },
                    n.clone(),
                )
            })
            .collect();
        Ok(newest_first(items, page))
    }
}

#[async_trait]
impl WebhookStore for Memory {
    async fn list_endpoints(&self, user: &str) -> StoreResult<Vec<WebhookEndpointRecord>> {
        let d = self.data.lock().unwrap();
        Ok(d.endpoints
            .values()
            .filter(|e| e.user_id == user)
            .cloned()
            .collect())
    }
    async fn get_endpoint(
        &self,
        user: &str,
        id: &str,
    ) -> StoreResult<Option<WebhookEndpointRecord>> {
        Ok(self.endpoint(user, id))
    }
    async fn insert_endpoint(&self, e: &WebhookEndpointRecord) -> StoreResult<()> {
        self.data
            .lock()
            .unwrap()
            .endpoints
            .insert((e.user_id.clone(), e.id.clone()), e.clone());
        Ok(())
    }
    async fn delete_endpoint(&self, user: &str, id: &str) -> StoreResult<bool> {
        let mut d = self.data.lock().unwrap();
        Ok(d.endpoints
            .remove(&(user.to_owned(), id.to_owned()))
            .is_some())
    }
    async fn enable_endpoint(&self, user: &str, id: &str) -> StoreResult<bool> {
        let mut d = self.data.lock().unwrap();
        Ok(
            match d.endpoints.get_mut(&(user.to_owned(), id.to_owned())) {
                Some(e) => {
                    e.disabled = false;
                    e.disabled_reason = None;
                    e.disabled_at = None;
                    true
                }
                None => false,
            },
        )
    }
    async fn set_endpoint_secret(&self, user: &str, id: &str, secret: &str) -> StoreResult<bool> {
        let mut d = self.data.lock().unwrap();
        Ok(
            match d.endpoints.get_mut(&(user.to_owned(), id.to_owned())) {
                Some(e) => {
                    e.secret = secret.to_owned();
                    true
                }
                None => false,
            },
        )
    }
}

#[async_trait]
impl ProviderEventStore for Memory {
    async fn claim_provider_event(
        &self,
        e: &ProviderEventRecord,
    ) -> StoreResult<ProviderEventClaim> {
        let mut d = self.data.lock().unwrap();
        Ok(match d.provider_events.get(&e.provider_event_id) {
            Some(existing) => ProviderEventClaim::Existing(existing.clone()),
            None => {
                d.provider_events
                    .insert(e.provider_event_id.clone(), e.clone());
                ProviderEventClaim::New
            }
        })
    }
    async fn mark_provider_event_forwarded(&self, id: &str) -> StoreResult<()> {
        if let Some(e) = self.data.lock().unwrap().provider_events.get_mut(id) {
            e.forwarded = true;
        }
        Ok(())
    }
}

#[async_trait]
impl StoreProbe for Memory {
    async fn ping(&self) -> StoreResult<()> {
        Ok(())
    }
}

/// Records what would be produced; can be switched to fail like an unreachable Kafka.
#[derive(Default, Clone)]
pub struct RecordingBus {
    pub commands: Arc<Mutex<Vec<BookingCommand>>>,
    pub payments: Arc<Mutex<Vec<PaymentRequest>>>,
    pub notices: Arc<Mutex<Vec<boxoffice_avro::records::NotificationRequested>>>,
    pub down: Arc<AtomicBool>,
}

#[async_trait]
impl Bus for RecordingBus {
    async fn send_command(&self, command: &BookingCommand) -> Result<(), BusError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(BusError::Unavailable("down".into()));
        }
        self.commands.lock().unwrap().push(command.clone());
        Ok(())
    }
    async fn send_payment(&self, request: &PaymentRequest) -> Result<(), BusError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(BusError::Unavailable("down".into()));
        }
        self.payments.lock().unwrap().push(request.clone());
        Ok(())
    }
    async fn send_notice(
        &self,
        notice: &boxoffice_avro::records::NotificationRequested,
    ) -> Result<(), BusError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(BusError::Unavailable("down".into()));
        }
        self.notices.lock().unwrap().push(notice.clone());
        Ok(())
    }
    async fn ping(&self) -> Result<(), BusError> {
        if self.down.load(Ordering::SeqCst) {
            Err(BusError::Unavailable("down".into()))
        } else {
            Ok(())
        }
    }
}
