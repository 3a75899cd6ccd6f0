//! Field validation shared by the handlers: every rule returns the field's error message, and
//! [`Checks`] collects them so one response names every bad field. Texts refuse control and
//! bidirectional-override characters; ids must be UUIDs; times are RFC 3339.

use std::net::IpAddr;

use boxoffice_runtime::egress::EgressPolicy;
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};

use crate::error::{ApiError, FieldError};
use crate::stores::Millis;

/// Collects field errors.
#[derive(Debug, Default)]
pub struct Checks {
    errors: Vec<FieldError>,
}

impl Checks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `result`'s error against `field`, returning the value when valid.
    pub fn check<T>(&mut self, field: &str, result: Result<T, String>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(message) => {
                self.errors.push(FieldError::new(field, message));
                None
            }
        }
    }

    pub fn fail(&mut self, field: &str, message: impl Into<String>) {
        self.errors.push(FieldError::new(field, message));
    }

    /// `Err` with every recorded error, if any.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::fields(self.errors))
        }
    }
}

/// Characters no text field may contain: controls (newlines included), bidi overrides and
/// isolates, zero-width joiners used to spoof names, and the BOM.
fn forbidden(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200B}'..='\u{200F}' | '\u{FEFF}')
}

/// A trimmed single-line text of `min..=max` characters.
pub fn text(value: &str, min: usize, max: usize) -> Result<String, String> {
    let trimmed = value.trim();
    let len = trimmed.chars().count();
    if len < min {
        return Err(if min == 1 {
            "must not be empty".to_owned()
        } else {
            format!("must be at least {min} characters")
        });
    }
    if len > max {
        return Err(format!("must be at most {max} characters"));
    }
    if trimmed.chars().any(forbidden) {
        return Err("must not contain control or invisible formatting characters".to_owned());
    }
    Ok(trimmed.to_owned())
}

/// A multi-line text (descriptions): newlines and tabs allowed, other controls not.
pub fn long_text(value: &str, max: usize) -> Result<String, String> {
    let trimmed = value.trim();
    if trimmed.chars().count() > max {
        return Err(format!("must be at most {max} characters"));
    }
    if trimmed
        .chars()
        .any(|c| forbidden(c) && c != '\n' && c != '\t')
    {
        return Err("must not contain control or invisible formatting characters".to_owned());
    }
    Ok(trimmed.to_owned())
}

/// An email address, lower-cased: `local@domain.tld`, printable ASCII, at most 254 characters.
pub fn email(value: &str) -> Result<String, String> {
    let value = value.trim().to_ascii_lowercase();
    let bad = || Err("must be an email address like name@example.com".to_owned());
    if value.len() > 254
        || !value.is_ascii()
        || value
            .chars()
            .any(|c| c.is_ascii_whitespace() || c.is_ascii_control())
    {
        return bad();
    }
    let Some((local, domain)) = value.split_once('@') else {
        return bad();
    };
    if local.is_empty() || local.len() > 64 || domain.contains('@') {
        return bad();
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2
        || labels.iter().any(|l| {
            l.is_empty()
                || l.starts_with('-')
                || l.ends_with('-')
                || !l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
    {
        return bad();
    }
    Ok(value)
}

/// A user name, lower-cased: 3 to 32 of `a-z 0-9 _ . -`, starting with a letter or digit.
pub fn user_name(value: &str) -> Result<String, String> {
    let value = value.trim().to_ascii_lowercase();
    let valid = (3..=32).contains(&value.len())
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && value
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    if valid {
        Ok(value)
    } else {
        Err(
            "must be 3 to 32 characters of a-z, 0-9, _, . and -, starting with a letter or digit"
                .to_owned(),
        )
    }
}

/// A person's name: 1 to 64 characters, any script.
pub fn person_name(value: &str) -> Result<String, String> {
    text(value, 1, 64)
}

/// A phone number: an optional `+`, then 7 to 15 digits, with spaces, dashes, dots and
/// parentheses allowed between them; stored as `+` and digits when it had a `+`.
pub fn phone(value: &str) -> Result<String, String> {
    let value = value.trim();
    let bad = || Err("must be a phone number: optional +, then 7 to 15 digits".to_owned());
    let (plus, rest) = match value.strip_prefix('+') {
        Some(rest) => (true, rest),
        None => (false, value),
    };
    if !rest
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, ' ' | '-' | '.' | '(' | ')'))
    {
        return bad();
    }
    let digits: String = rest.chars().filter(char::is_ascii_digit).collect();
    if !(7..=15).contains(&digits.len()) {
        return bad();
    }
    Ok(if plus { format!("+{digits}") } else { digits })
}

/// A password: 10 to 128 characters, no control characters.
pub fn password(value: &str) -> Result<String, String> {
    let len = value.chars().count();
    if len < 10 {
        return Err("must be at least 10 characters".to_owned());
    }
    if len > 128 {
        return Err("must be at most 128 characters".to_owned());
    }
    if value.chars().any(char::is_control) {
        return Err("must not contain control characters".to_owned());
    }
    Ok(value.to_owned())
}

/// A birth day `YYYY-MM-DD`, from 1900-01-01 to today.
pub fn birth_day(value: &str) -> Result<NaiveDate, String> {
    let date = NaiveDate::parse_from_str(value.trim(), "%Y-%m-%d")
        .map_err(|_| "must be a date YYYY-MM-DD".to_owned())?;
    let earliest = NaiveDate::from_ymd_opt(1900, 1, 1).unwrap_or_default();
    if date < earliest || date > Utc::now().date_naive() {
        return Err("must be between 1900-01-01 and today".to_owned());
    }
    Ok(date)
}

/// A UUID id (any case), returned in the canonical lower-case hyphenated form.
pub fn id(value: &str) -> Result<String, String> {
    uuid::Uuid::parse_str(value.trim())
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| "must be an id (UUID)".to_owned())
}

/// An ISO 4217 currency code: three upper-case letters.
pub fn currency(value: &str) -> Result<String, String> {
    if value.len() == 3 && value.chars().all(|c| c.is_ascii_uppercase()) {
        Ok(value.to_owned())
    } else {
        Err("must be an ISO 4217 code of three upper-case letters (EUR, USD, ...)".to_owned())
    }
}

/// Earliest and latest times accepted anywhere (years 2000 to 2199).
const EARLIEST: Millis = 946_684_800_000;
const LATEST: Millis = 7_258_118_400_000;

/// An RFC 3339 time, in milliseconds since the epoch.
pub fn time(value: &str) -> Result<Millis, String> {
    let at = DateTime::parse_from_rfc3339(value.trim())
        .map_err(|_| "must be an RFC 3339 time like 2030-05-17T20:00:00Z".to_owned())?
        .timestamp_millis();
    if !(EARLIEST..=LATEST).contains(&at) {
        return Err("must be between the years 2000 and 2199".to_owned());
    }
    Ok(at)
}

/// A number in `min..=max`.
pub fn range<T: PartialOrd + std::fmt::Display + Copy>(
    value: T,
    min: T,
    max: T,
) -> Result<T, String> {
    if value < min || value > max {
        Err(format!("must be between {min} and {max}"))
    } else {
        Ok(value)
    }
}

/// Milliseconds as RFC 3339 UTC text.
pub fn rfc3339(at: Millis) -> String {
    DateTime::<Utc>::from_timestamp_millis(at)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// An `Idempotency-Key`: 1 to 128 visible ASCII characters.
pub fn idempotency_key(value: &str) -> Result<String, String> {
    if (1..=128).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(value.to_owned())
    } else {
        Err("must be 1 to 128 visible ASCII characters".to_owned())
    }
}

/// Longest webhook URL accepted.
pub const MAX_WEBHOOK_URL_LEN: usize = 2048;

/// A webhook endpoint URL: absolute `http` or `https`, with a host, without user info, at most
/// [`MAX_WEBHOOK_URL_LEN`] characters; returned trimmed.
///
/// The host must be a DNS name (ASCII labels of letters, digits, `-` and `_`; international
/// names in their `xn--` form), an IPv4 address or a bracketed IPv6 address: stricter than
/// the URL standard, so that every accepted URL is one the notifier's HTTP client takes too
/// (a URL it refused would fail every delivery). Where it may point is
/// [`webhook_destination`]'s question.
pub fn webhook_url(value: &str) -> Result<String, String> {
    let value = value.trim();
    if value.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if value.len() > MAX_WEBHOOK_URL_LEN {
        return Err(format!("must be at most {MAX_WEBHOOK_URL_LEN} characters"));
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(
            "must be ASCII without spaces or control characters (percent-encode the rest; \
             international domain names as xn--)"
                .to_owned(),
        );
    }
    let uri: axum::http::Uri = value
        .parse()
        .map_err(|_| "must be an absolute http or https URL".to_owned())?;
    let scheme = uri.scheme_str().unwrap_or_default();
    if !(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")) {
        return Err("must be an absolute http or https URL".to_owned());
    }
    let Some(authority) = uri.authority() else {
        return Err("must be an absolute http or https URL".to_owned());
    };
    if authority.as_str().contains('@') {
        return Err("must not contain user info (user:password@)".to_owned());
    }
    if let Some((_, port)) = authority.as_str().rsplit_once(':')
        && !port.ends_with(']')
        && !port.is_empty()
        && port.parse::<u16>().is_err()
    {
        return Err("must have a port from 0 to 65535".to_owned());
    }
    webhook_host(authority.host())?;
    Ok(value.to_owned())
}

/// Whether a URL that passed [`webhook_url`] may be registered under `policy`: a literal
/// address (and `localhost` names, which always mean loopback) must be allowed. Other names
/// are checked by the notifier at delivery, against what they resolve to then.
pub fn webhook_destination(url: &str, policy: &EgressPolicy) -> Result<(), String> {
    let host = url
        .parse::<axum::http::Uri>()
        .ok()
        .and_then(|uri| uri.host().map(str::to_ascii_lowercase))
        .unwrap_or_default();
    let name = host.strip_suffix('.').unwrap_or(&host);
    let address = if let Some(v6) = name.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<IpAddr>().ok()
    } else if name == "localhost" || name.ends_with(".localhost") {
        Some(IpAddr::from([127, 0, 0, 1]))
    } else {
        name.parse::<IpAddr>().ok()
    };
    match address {
        Some(address) => policy.check(address).map_err(|refused| refused.to_string()),
        None => Ok(()),
    }
}

/// See [`webhook_url`].
fn webhook_host(host: &str) -> Result<(), String> {
    let bad = |what: &str| Err(format!("must have a valid host: {what}"));
    if host.is_empty() {
        return bad("it is empty");
    }
    if let Some(inner) = host.strip_prefix('[') {
        return match inner
            .strip_suffix(']')
            .map(str::parse::<std::net::Ipv6Addr>)
        {
            Some(Ok(_)) => Ok(()),
            _ => bad("not an IPv6 address"),
        };
    }
    if host.len() > 253 {
        return bad("longer than 253 characters");
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    let labels: Vec<&str> = name.split('.').collect();
    // The URL standard reads a host whose last label is a number as an IPv4 address.
    if labels
        .last()
        .is_some_and(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()))
    {
        return match name.parse::<std::net::Ipv4Addr>() {
            Ok(_) => Ok(()),
            Err(_) => bad("not an IPv4 address"),
        };
    }
    let label_ok = |l: &&str| {
        (1..=63).contains(&l.len())
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if labels.iter().all(label_ok) {
        Ok(())
    } else {
        bad("DNS labels are 1 to 63 letters, digits, - or _")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_destinations_at_non_public_addresses_need_the_allow_list() {
        let public = EgressPolicy::public_only();
        for url in [
            "http://169.254.169.254/latest/meta-data/",
            "http://127.0.0.1:9042/",
            "http://localhost:8080/",
            "http://api.localhost./",
            "http://10.1.2.3/",
            "http://[::1]:9000/",
            "http://[::ffff:10.0.0.1]/",
            "http://[fd00::1]/",
        ] {
            let url = webhook_url(url).unwrap();
            let refused = webhook_destination(&url, &public).unwrap_err();
            assert!(
                refused.contains("WEBHOOK_ALLOW_NETWORKS"),
                "{url}: {refused}"
            );
        }
        for url in [
            "https://hooks.example.com/x",
            "http://8.8.8.8/",
            "http://[2606:4700::1]/",
        ] {
            assert_eq!(webhook_destination(url, &public), Ok(()), "{url}");
        }
        let local = boxoffice_runtime::egress::EgressArgs::loopback().policy();
        assert_eq!(
            webhook_destination("http://localhost:8080/", &local),
            Ok(())
        );
        assert_eq!(webhook_destination("http://[::1]:9000/", &local), Ok(()));
        assert!(webhook_destination("http://169.254.169.254/", &local).is_err());
    }

    #[test]
    fn webhook_urls() {
        for good in [
            "https://example.com/hooks/boxoffice",
            "http://127.0.0.1:8080/x?y=1",
            "http://localhost/",
            "HTTPS://Example.COM",
            "http://[::1]:9000/hook",
            "https://my_service.internal:443/a/b",
            "https://xn--bcher-kva.example/",
            "https://example.com./trailing-dot",
        ] {
            assert!(webhook_url(good).is_ok(), "{good}: {:?}", webhook_url(good));
        }
        assert_eq!(
            webhook_url("  https://example.com/h ").unwrap(),
            "https://example.com/h"
        );
        for bad in [
            "",
            "example.com/hook",
            "/relative/path",
            "ftp://example.com/",
            "javascript:alert(1)",
            "file:///etc/passwd",
            "https://user:pass@example.com/",
            "https://user@example.com/",
            "https:///nohost",
            "http://:80/",
            "https://exa mple.com/",
            "https://exa\nmple.com/",
            "https://bücher.example/",
            "https://example.com:99999/",
            "https://999.1.1.1/",
            "https://1.2.3/",
            "https://[::1/",
            "https://[zz::1]/",
            "https://a..b/",
            "https://-dash!.com/",
        ] {
            assert!(webhook_url(bad).is_err(), "{bad:?} was accepted");
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_WEBHOOK_URL_LEN));
        assert!(webhook_url(&long).unwrap_err().contains("2048"));
        let limit = format!(
            "https://example.com/{}",
            "a".repeat(MAX_WEBHOOK_URL_LEN - 20)
        );
        assert_eq!(limit.len(), MAX_WEBHOOK_URL_LEN);
        assert!(webhook_url(&limit).is_ok());
    }

    #[test]
    fn emails() {
        assert_eq!(email(" Ann@Example.COM ").unwrap(), "ann@example.com");
        for bad in [
            "",
            "a",
            "a@b",
            "@b.c",
            "a@@b.c",
            "a b@c.d",
            "a@b..c",
            "ä@b.c",
            "a@-b.c",
            "x'; DROP TABLE users;--@a.b",
        ] {
            assert!(email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn user_names_and_people() {
        assert_eq!(user_name("Ann_1").unwrap(), "ann_1");
        for bad in [
            "ab",
            "_ann",
            "ann smith",
            "ann@x",
            &"a".repeat(33),
            "' OR 1=1 --",
        ] {
            assert!(user_name(bad).is_err(), "{bad}");
        }
        assert_eq!(person_name(" Zoë ").unwrap(), "Zoë");
        assert!(person_name("李小龍").is_ok());
        assert!(person_name("").is_err());
        assert!(person_name("a\u{202E}b").is_err());
        assert!(person_name("a\nb").is_err());
        assert!(person_name("a\u{0}b").is_err());
    }

    #[test]
    fn phones_passwords_dates_and_times() {
        assert_eq!(phone("+49 (30) 123-4567").unwrap(), "+49301234567");
        assert!(phone("12345").is_err());
        assert!(phone("+49 abc 1234567").is_err());
        assert!(password("short").is_err());
        assert!(password("long enough password").is_ok());
        assert!(password(&"p".repeat(129)).is_err());
        assert!(birth_day("1990-02-30").is_err());
        assert!(birth_day("1850-01-01").is_err());
        assert!(birth_day("1990-05-17").is_ok());
        assert_eq!(time("2030-01-01T00:00:00Z").unwrap(), 1_893_456_000_000);
        assert!(time("yesterday").is_err());
        assert!(time("1970-01-01T00:00:00Z").is_err());
        assert_eq!(rfc3339(1_893_456_000_000), "2030-01-01T00:00:00.000Z");
        assert!(id("not-a-uuid").is_err());
        assert!(currency("eur").is_err());
        assert!(idempotency_key("key 1").is_err());
    }
}
