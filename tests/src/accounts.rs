//! Accounts for the harnesses that drive ingest over HTTP (chaos suite, load generators,
//! abuse tests): register, then have an admin vouch for the address through the API (`POST
//! v1/users/{id}/verify-email`), since they cannot open the emailed link at load;
//! `tests/tests/accounts.rs` follows the link itself.

use anyhow::Context;
use serde_json::{Value, json};

/// A signed-in account whose email address is verified: it may book.
#[derive(Debug, Clone)]
pub struct VerifiedAccount {
    pub user_id: String,
    pub access_token: String,
}

pub async fn post(
    http: &reqwest::Client,
    url: String,
    token: Option<&str>,
    body: &Value,
) -> anyhow::Result<(u16, Value)> {
    let mut request = http.post(&url).json(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or(Value::Null)))
}

/// Signs in (at most 10 tries, a second apart while rate-limited); the token answer.
pub async fn sign_in(
    http: &reqwest::Client,
    base: &str,
    login: &str,
    password: &str,
) -> anyhow::Result<Value> {
    let body = json!({"login": login, "password": password});
    for _ in 0..10 {
        let (status, answer) = post(http, format!("{base}/v1/login"), None, &body).await?;
        match status {
            200 => return Ok(answer),
            429 => tokio::time::sleep(std::time::Duration::from_secs(1)).await,
            _ => anyhow::bail!("login {login}: {status} {answer}"),
        }
    }
    anyhow::bail!("login {login}: still rate-limited after 10 tries")
}

/// Registers `registration` (its `user_name` and `password` sign in), has `admin` verify its
/// address and signs it in again.
pub async fn register_verified(
    http: &reqwest::Client,
    base: &str,
    admin: &str,
    registration: &Value,
) -> anyhow::Result<VerifiedAccount> {
    let login = registration["user_name"].as_str().context("no user_name")?;
    let password = registration["password"].as_str().context("no password")?;
    let (status, answer) = post(http, format!("{base}/v1/register"), None, registration).await?;
    anyhow::ensure!(status == 202, "registering {login}: {status} {answer}");
    let first = sign_in(http, base, login, password).await?;
    let user_id = first["user_id"].as_str().context("no user_id")?.to_owned();
    let (status, answer) = post(
        http,
        format!("{base}/v1/users/{user_id}/verify-email"),
        Some(admin),
        &json!({}),
    )
    .await?;
    anyhow::ensure!(status == 200, "verifying {login}: {status} {answer}");
    let signed_in = sign_in(http, base, login, password).await?;
    Ok(VerifiedAccount {
        user_id,
        access_token: signed_in["access_token"]
            .as_str()
            .context("no access_token")?
            .to_owned(),
    })
}
