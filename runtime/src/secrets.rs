//! Secrets and the development mode. A secret is read from the environment variable `NAME` or
//! from the file named by `NAME_FILE` (a Docker or Kubernetes secret), never from a flag (flags
//! are visible in `ps`). Without the development mode (`--dev` / `BOXOFFICE_DEV=1`) a binary
//! refuses a missing secret, a value shipped for local development, and a guessable one; the
//! error names the setting to fix. With it, the local stack and the tests may use the shipped
//! development values.

use std::fmt;
use std::path::PathBuf;

/// Fewest distinct byte values a production secret must contain: a run of one repeated
/// character (or a short word repeated) is not a secret. 48 random bytes in base64 carry about
/// 40 distinct characters, 32 random bytes in hex about 16.
pub const MIN_DISTINCT_BYTES: usize = 10;

/// Values that appeared in this repository for local development (defaults, the compose file,
/// the docs); refused outside the development mode wherever they are given.
pub const KNOWN_DEVELOPMENT_VALUES: &[&str] = &[
    "whsec_boxoffice_local_dev_secret",
    "sk_boxoffice_local_dev",
    "dev-only-secret-change-me-0123456789abcdef",
    "dev-only-admin-password",
];

/// The development mode flag, flattened into every service's command line.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct DevMode {
    /// Development mode: allows the shipped development secrets, the sandbox payment gateway and
    /// webhook deliveries to the local network. Never set it in production.
    #[arg(long = "dev", env = "BOXOFFICE_DEV", global = true, action = clap::ArgAction::SetTrue,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub dev: bool,
}

/// A secret's bytes; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// The secret as text (it was read from an environment variable or a UTF-8 file).
    pub fn text(&self) -> &str {
        // Every `Secret` is built from a `String` (see `read_with`).
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Why a secret setting was refused. Each message names the variable to set.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(
        "{name} is required ({hint}); set it in the environment or name a file with {name}_FILE"
    )]
    Missing {
        name: &'static str,
        hint: &'static str,
    },
    #[error("set {name} or {name}_FILE, not both")]
    Both { name: &'static str },
    #[error("{name}_FILE: cannot read {path}: {source}")]
    File {
        name: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{name} is empty")]
    Empty { name: &'static str },
    #[error(
        "{name} is a value shipped for local development; set your own ({hint}), or pass --dev / \
         BOXOFFICE_DEV=1 to run the development stack"
    )]
    DevelopmentValue {
        name: &'static str,
        hint: &'static str,
    },
    #[error(
        "{name} is guessable ({why}); set your own ({hint}), or pass --dev / BOXOFFICE_DEV=1 to \
         run the development stack"
    )]
    Guessable {
        name: &'static str,
        hint: &'static str,
        why: String,
    },
    #[error("{name}: {why}")]
    Invalid { name: &'static str, why: String },
}

/// One secret setting: its variable and how to make a good value.
#[derive(Debug, Clone, Copy)]
pub struct SecretSetting {
    pub name: &'static str,
    /// How to make a value, e.g. "48 random bytes: `head -c 48 /dev/urandom | base64`".
    pub hint: &'static str,
}

impl SecretSetting {
    /// Reads the setting from the process environment (see [`SecretSetting::read_with`]).
    pub fn read(&self) -> Result<Option<Secret>, SecretError> {
        self.read_with(|key| std::env::var(key).ok())
    }

    /// Reads `NAME` or the file named by `NAME_FILE` (one trailing newline dropped, as editors
    /// and `echo` add one); `None` when neither is set (or set empty); an empty file is an
    /// error. `env` looks a variable up.
    pub fn read_with(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Secret>, SecretError> {
        let name = self.name;
        let file_var = format!("{name}_FILE");
        // An empty variable counts as unset (compose's `${NAME:-}` sets it empty).
        let set = |key: &str| env(key).filter(|value| !value.is_empty());
        let value =
            match (set(name), set(&file_var)) {
                (Some(_), Some(_)) => return Err(SecretError::Both { name }),
                (None, None) => return Ok(None),
                (Some(value), None) => value,
                (None, Some(path)) => {
                    let path = PathBuf::from(path);
                    let text = std::fs::read_to_string(&path)
                        .map_err(|source| SecretError::File { name, path, source })?;
                    let text = text.strip_suffix('\n').unwrap_or(&text);
                    text.strip_suffix('\r').unwrap_or(text).to_owned()
                }
            };
        if value.is_empty() {
            return Err(SecretError::Empty { name });
        }
        Ok(Some(Secret(value.into_bytes())))
    }

    /// The secret a production deployment must set: refused when missing, and (outside the
    /// development mode) when it is a shipped development value or guessable.
    pub fn require(&self, secret: Option<Secret>, dev: bool) -> Result<Secret, SecretError> {
        let secret = secret.ok_or(SecretError::Missing {
            name: self.name,
            hint: self.hint,
        })?;
        self.check(secret, dev)
    }

    /// Like [`SecretSetting::require`], but in the development mode a missing value falls back
    /// to `development` (the value the local tools share).
    pub fn require_or_development(
        &self,
        secret: Option<Secret>,
        dev: bool,
        development: &str,
    ) -> Result<Secret, SecretError> {
        match secret {
            None if dev => Ok(Secret(development.as_bytes().to_vec())),
            other => self.require(other, dev),
        }
    }

    fn check(&self, secret: Secret, dev: bool) -> Result<Secret, SecretError> {
        if dev {
            return Ok(secret);
        }
        let (name, hint) = (self.name, self.hint);
        if KNOWN_DEVELOPMENT_VALUES
            .iter()
            .any(|known| known.as_bytes() == secret.bytes())
        {
            return Err(SecretError::DevelopmentValue { name, hint });
        }
        let distinct = distinct_bytes(secret.bytes());
        if distinct < MIN_DISTINCT_BYTES {
            return Err(SecretError::Guessable {
                name,
                hint,
                why: format!(
                    "{distinct} distinct characters, at least {MIN_DISTINCT_BYTES} are needed"
                ),
            });
        }
        Ok(secret)
    }
}

fn distinct_bytes(bytes: &[u8]) -> usize {
    let mut seen = [false; 256];
    for &b in bytes {
        seen[usize::from(b)] = true;
    }
    seen.iter().filter(|&&s| s).count()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const JWT: SecretSetting = SecretSetting {
        name: "TEST_SECRET",
        hint: "48 random bytes",
    };

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |key| map.get(key).cloned()
    }

    const GOOD: &str = "q8Vt3nZ1wXk0rLpM2sYcB7dE9fGhJ4aU";

    #[test]
    fn reads_the_variable_or_the_file_never_both() {
        assert_eq!(JWT.read_with(env(&[])).unwrap(), None);
        let read = JWT.read_with(env(&[("TEST_SECRET", GOOD)])).unwrap();
        assert_eq!(read.unwrap().text(), GOOD);

        let dir = std::env::temp_dir().join(format!("boxoffice-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("secret");
        std::fs::write(&file, format!("{GOOD}\n")).unwrap();
        let path = file.to_str().unwrap();
        let read = JWT.read_with(env(&[("TEST_SECRET_FILE", path)])).unwrap();
        assert_eq!(read.unwrap().text(), GOOD, "one trailing newline dropped");

        let both = JWT.read_with(env(&[("TEST_SECRET", GOOD), ("TEST_SECRET_FILE", path)]));
        assert!(matches!(both, Err(SecretError::Both { .. })), "{both:?}");

        let missing_file = JWT.read_with(env(&[("TEST_SECRET_FILE", "/nonexistent/secret")]));
        let message = missing_file.unwrap_err().to_string();
        assert!(message.contains("TEST_SECRET_FILE"), "{message}");
        assert_eq!(JWT.read_with(env(&[("TEST_SECRET", "")])).unwrap(), None);
        let empty_file = dir.join("empty");
        std::fs::write(&empty_file, "\n").unwrap();
        let empty = JWT.read_with(env(&[("TEST_SECRET_FILE", empty_file.to_str().unwrap())]));
        assert!(matches!(empty, Err(SecretError::Empty { .. })), "{empty:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn production_refuses_missing_shipped_and_guessable_secrets_naming_the_setting() {
        let secret = |s: &str| Some(Secret(s.as_bytes().to_vec()));
        for (value, expected) in [
            (None, "is required"),
            (
                secret("whsec_boxoffice_local_dev_secret"),
                "local development",
            ),
            (secret(&"a".repeat(64)), "guessable"),
            (secret(&"abcd".repeat(16)), "guessable"),
        ] {
            let err = JWT.require(value, false).unwrap_err().to_string();
            assert!(err.contains("TEST_SECRET"), "{err}");
            assert!(err.contains(expected), "{err}");
        }
        assert_eq!(JWT.require(secret(GOOD), false).unwrap().text(), GOOD);
    }

    #[test]
    fn the_development_mode_allows_shipped_values_and_falls_back_to_them() {
        let dev_value = Some(Secret(b"dev-only-admin-password".to_vec()));
        assert!(JWT.require(dev_value, true).is_ok());
        assert!(JWT.require(None, true).is_err(), "required stays required");
        let fallback = JWT.require_or_development(None, true, "whsec_dev").unwrap();
        assert_eq!(fallback.text(), "whsec_dev");
        assert!(
            JWT.require_or_development(None, false, "whsec_dev")
                .is_err()
        );
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret(GOOD.as_bytes().to_vec());
        assert!(!format!("{s:?}").contains(GOOD));
    }

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        dev: DevMode,
    }

    /// Off unless asked for: no default value, only the flag or `BOXOFFICE_DEV` (which
    /// `scripts/test` sets for this very process, so the environment is not asserted here:
    /// tests/tests/safe_defaults.rs starts binaries with a clean environment).
    #[test]
    fn dev_mode_is_off_unless_asked_for() {
        use clap::{CommandFactory, Parser};
        let command = Cli::command();
        let dev = command
            .get_arguments()
            .find(|a| a.get_id() == "dev")
            .unwrap();
        assert!(dev.get_default_values().is_empty());
        assert_eq!(dev.get_env(), Some(std::ffi::OsStr::new("BOXOFFICE_DEV")));
        assert!(Cli::try_parse_from(["x", "--dev"]).unwrap().dev.dev);
    }
}
