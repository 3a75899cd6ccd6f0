//! Accounts in CQL: uniqueness of email and user name by lightweight transactions on
//! `auth_by_email` / `auth_by_user_name` (the first claim is released when the second fails),
//! profiles in `auth_profiles` and `users`, the admin listing in `users_by_created`, refresh
//! tokens in `refresh_tokens` (by hash, with a TTL) and login sessions in `auth_sessions`.

use async_trait::async_trait;
use scylla::value::{CqlDate, CqlTimestamp};

use super::{CqlStores, USERS_BUCKET, applied};
use crate::stores::{
    AccountStore, CreateAccountError, Credentials, Millis, NewAccount, Page, PageRequest,
    RefreshRecord, Role, StoreError, StoreResult, UpdateUserError, UserRecord, UserUpdate,
};

/// Days between 1970-01-01 and the CQL `date` origin offset (2^31 is the epoch).
const CQL_DATE_EPOCH: i64 = 1 << 31;

fn to_cql_date(date: chrono::NaiveDate) -> CqlDate {
    let days = date
        .signed_duration_since(chrono::NaiveDate::default())
        .num_days();
    CqlDate(u32::try_from(days + CQL_DATE_EPOCH).unwrap_or(0))
}

fn from_cql_date(date: CqlDate) -> Option<chrono::NaiveDate> {
    let days = i64::from(date.0) - CQL_DATE_EPOCH;
    chrono::NaiveDate::default().checked_add_signed(chrono::TimeDelta::try_days(days)?)
}

type UserRow = (
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<CqlDate>,
    Option<String>,
    Option<CqlTimestamp>,
    Option<CqlTimestamp>,
);

/// A user's record from its `users` row and its `auth_profiles` row (role, verification, last
/// password reset; defaults when the profile is missing).
fn user_from_row(row: UserRow, profile: Option<ProfileRow>) -> UserRecord {
    let (role, verified_at, changed_at) = profile
        .map(|(_, role, verified_at, changed_at)| (role, verified_at, changed_at))
        .unwrap_or_default();
    let (
        id,
        email,
        user_name,
        first_name,
        last_name,
        birth_day,
        mobile_phone,
        created_at,
        updated_at,
    ) = row;
    UserRecord {
        id,
        email: email.unwrap_or_default(),
        user_name: user_name.unwrap_or_default(),
        first_name: first_name.unwrap_or_default(),
        last_name: last_name.unwrap_or_default(),
        birth_day: birth_day.and_then(from_cql_date),
        mobile_phone: mobile_phone.unwrap_or_default(),
        role: role.as_deref().map_or(Role::User, Role::parse),
        email_verified: verified_at.is_some(),
        password_changed_at: changed_at.map(|t| t.0),
        created_at: created_at.map_or(0, |t| t.0),
        updated_at: updated_at.map_or(0, |t| t.0),
    }
}

/// `auth_profiles`: password hash, role, when the email was verified, when the password was
/// last reset.
type ProfileRow = (
    Option<String>,
    Option<String>,
    Option<CqlTimestamp>,
    Option<CqlTimestamp>,
);

impl CqlStores {
    async fn profile(&self, user_id: &str) -> StoreResult<Option<ProfileRow>> {
        self.one(&self.s.read_profile, (user_id,), "read profile")
            .await
    }
}

#[async_trait]
impl AccountStore for CqlStores {
    async fn create_account(&self, a: &NewAccount) -> Result<(), CreateAccountError> {
        let claimed = applied(
            self.run(&self.s.claim_email, (&a.email, &a.user_id), "claim email")
                .await?,
            "claim email",
        )?;
        if !claimed {
            return Err(CreateAccountError::EmailTaken);
        }
        let claimed = applied(
            self.run(
                &self.s.claim_user_name,
                (&a.user_name, &a.user_id),
                "claim user name",
            )
            .await?,
            "claim user name",
        )?;
        if !claimed {
            // Give the email back: the account does not exist.
            self.run(
                &self.s.release_email,
                (&a.email, &a.user_id),
                "release email",
            )
            .await?;
            return Err(CreateAccountError::UserNameTaken);
        }
        let at = CqlTimestamp(a.created_at);
        let profile = self.run(
            &self.s.insert_profile,
            (
                &a.user_id,
                &a.email,
                &a.user_name,
                &a.password_hash,
                a.role.as_str(),
                at,
                a.email_verified_at.map(CqlTimestamp),
            ),
            "insert profile",
        );
        let user = self.run(
            &self.s.insert_user,
            (
                &a.user_id,
                &a.email,
                &a.user_name,
                &a.first_name,
                &a.last_name,
                &a.mobile_phone,
                at,
                at,
            ),
            "insert user",
        );
        let listing = self.run(
            &self.s.insert_user_listing,
            (USERS_BUCKET, at, &a.user_id),
            "insert user listing",
        );
        let (profile, user, listing) = tokio::join!(profile, user, listing);
        profile?;
        user?;
        listing?;
        Ok(())
    }

    async fn find_credentials(&self, login: &str) -> StoreResult<Option<Credentials>> {
        let owner: Option<(Option<String>,)> = if login.contains('@') {
            self.one(&self.s.email_owner, (login,), "find by email")
                .await?
        } else {
            self.one(&self.s.user_name_owner, (login,), "find by user name")
                .await?
        };
        let Some((Some(user_id),)) = owner else {
            return Ok(None);
        };
        self.credentials_of(&user_id).await
    }

    async fn credentials_of(&self, user_id: &str) -> StoreResult<Option<Credentials>> {
        let Some((Some(password_hash), role, verified_at, _)) = self.profile(user_id).await? else {
            return Ok(None);
        };
        Ok(Some(Credentials {
            user_id: user_id.to_owned(),
            password_hash,
            role: Role::parse(role.as_deref().unwrap_or("user")),
            email_verified: verified_at.is_some(),
        }))
    }

    async fn set_email_verified(&self, user_id: &str, at: Millis) -> StoreResult<()> {
        self.run(
            &self.s.set_email_verified,
            (CqlTimestamp(at), user_id),
            "set email verified",
        )
        .await
        .map(|_| ())
    }

    async fn set_password_hash(
        &self,
        user_id: &str,
        password_hash: &str,
        at: Millis,
    ) -> StoreResult<()> {
        self.run(
            &self.s.set_password_hash,
            (password_hash, CqlTimestamp(at), user_id),
            "set password hash",
        )
        .await
        .map(|_| ())
    }

    async fn user_id_by_email(&self, email: &str) -> StoreResult<Option<String>> {
        let owner: Option<(Option<String>,)> = self
            .one(&self.s.email_owner, (email,), "find by email")
            .await?;
        Ok(owner.and_then(|(id,)| id))
    }

    async fn set_role(&self, user_id: &str, role: Role) -> StoreResult<()> {
        self.run(&self.s.set_role, (role.as_str(), user_id), "set role")
            .await
            .map(|_| ())
    }

    async fn get_user(&self, user_id: &str) -> StoreResult<Option<UserRecord>> {
        let (user, profile) = tokio::join!(
            self.one::<UserRow>(&self.s.read_user, (user_id,), "read user"),
            self.profile(user_id)
        );
        let profile = profile?;
        Ok(user?.map(|row| user_from_row(row, profile)))
    }

    async fn update_user(
        &self,
        current: &UserRecord,
        u: &UserUpdate,
    ) -> Result<(), UpdateUserError> {
        let renamed = u.user_name != current.user_name;
        if renamed {
            let claimed = applied(
                self.run(
                    &self.s.claim_user_name,
                    (&u.user_name, &current.id),
                    "claim user name",
                )
                .await?,
                "claim user name",
            )?;
            if !claimed {
                return Err(UpdateUserError::UserNameTaken);
            }
        }
        let user = self.run(
            &self.s.update_user,
            (
                &u.user_name,
                &u.first_name,
                &u.last_name,
                u.birth_day.map(to_cql_date),
                &u.mobile_phone,
                CqlTimestamp(u.updated_at),
                &current.id,
            ),
            "update user",
        );
        let profile = async {
            if renamed {
                self.run(
                    &self.s.update_profile_name,
                    (&u.user_name, &current.id),
                    "update profile",
                )
                .await?;
                self.run(
                    &self.s.release_user_name,
                    (&current.user_name, &current.id),
                    "release user name",
                )
                .await?;
            }
            Ok::<(), StoreError>(())
        };
        let (user, profile) = tokio::join!(user, profile);
        user?;
        profile?;
        Ok(())
    }

    async fn list_users(&self, request: &PageRequest) -> StoreResult<Page<UserRecord>> {
        let page: Page<(String, CqlTimestamp)> = self
            .page(&self.pages.users, USERS_BUCKET, request, "list users")
            .await?;
        let users =
            futures::future::try_join_all(page.items.iter().map(|(id, _)| self.get_user(id)))
                .await?;
        Ok(Page {
            items: users.into_iter().flatten().collect(),
            more: page.more,
        })
    }

    async fn insert_refresh(&self, r: &RefreshRecord) -> StoreResult<()> {
        let now = crate::now_millis();
        // The TTL only cleans up: `expires_at` decides. Rounded up and one second over, since
        // the store counts it from a whole second (a floored TTL dropped a token up to two
        // seconds before its session's end).
        let seconds = ((r.expires_at - now).max(0) + 999) / 1000 + 1;
        let ttl = i32::try_from(seconds).unwrap_or(i32::MAX);
        self.run(
            &self.s.insert_refresh,
            (
                &r.token_hash,
                &r.user_id,
                &r.family_id,
                CqlTimestamp(r.expires_at),
                CqlTimestamp(r.issued_at),
                ttl,
            ),
            "insert refresh token",
        )
        .await
        .map(|_| ())
    }

    async fn get_refresh(&self, token_hash: &str) -> StoreResult<Option<RefreshRecord>> {
        type Row = (
            Option<String>,
            Option<String>,
            Option<CqlTimestamp>,
            Option<bool>,
            Option<CqlTimestamp>,
        );
        let row: Option<Row> = self
            .one(&self.s.read_refresh, (token_hash,), "read refresh token")
            .await?;
        Ok(
            row.and_then(|(user_id, family_id, expires_at, used, issued_at)| {
                Some(RefreshRecord {
                    token_hash: token_hash.to_owned(),
                    user_id: user_id?,
                    family_id: family_id?,
                    expires_at: expires_at.map_or(0, |t| t.0),
                    used: used.unwrap_or(true),
                    issued_at: issued_at.map_or(0, |t| t.0),
                })
            }),
        )
    }

    async fn consume_refresh(&self, token_hash: &str) -> StoreResult<bool> {
        applied(
            self.run(
                &self.s.consume_refresh,
                (token_hash,),
                "consume refresh token",
            )
            .await?,
            "consume refresh token",
        )
    }

    async fn revoke_family(&self, family_id: &str, at: Millis) -> StoreResult<()> {
        self.run(
            &self.s.revoke_family,
            (CqlTimestamp(at), family_id),
            "revoke session",
        )
        .await
        .map(|_| ())
    }

    async fn family_revoked(&self, family_id: &str) -> StoreResult<bool> {
        let row: Option<(Option<bool>,)> = self
            .one(&self.s.read_family, (family_id,), "read session")
            .await?;
        Ok(matches!(row, Some((Some(true),))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cql_dates_round_trip() {
        for date in ["1970-01-01", "1990-05-17", "1900-02-28", "2100-12-31"] {
            let d: chrono::NaiveDate = date.parse().unwrap();
            assert_eq!(from_cql_date(to_cql_date(d)), Some(d), "{date}");
        }
        assert_eq!(to_cql_date("1970-01-01".parse().unwrap()).0, 1 << 31);
    }
}
