//! Parsing of store URLs, with credentials kept out of every printed form.

use std::fmt;
use std::path::PathBuf;

use crate::error::{StoreError, StoreResult};

/// Where a store lives, parsed from a URL:
///
/// | URL | store |
/// |---|---|
/// | `mysql://user:password@host:3306/database` (or `mariadb://`) | MySQL / MariaDB |
/// | `sqlite://path/to/file.db`, `sqlite:///absolute/path.db` | SQLite file, created if missing |
/// | `sqlite::memory:` | SQLite in memory, private to the process |
/// | `memory://` | the in-memory store |
///
/// `Debug` and `Display` print the URL with the password replaced by `***`.
///
/// ```
/// use helix_store::StoreUrl;
///
/// let url = StoreUrl::parse("mysql://app:s3cret@db.internal:3306/helix").unwrap();
/// assert_eq!(url.to_string(), "mysql://app:***@db.internal:3306/helix");
/// assert!(StoreUrl::parse("postgres://localhost/helix").is_err());
/// ```
#[derive(Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// A MySQL or MariaDB server.
    Mysql(url::Url),
    /// A SQLite database file.
    Sqlite(PathBuf),
    /// A SQLite database in memory.
    SqliteMemory,
    /// The in-memory store.
    Memory,
}

impl StoreUrl {
    /// Parses a store URL.
    ///
    /// # Errors
    /// [`StoreError::Invalid`] for a malformed URL, an unknown scheme, a MySQL URL without a
    /// host or a database name, or a SQLite URL without a path. The message never contains
    /// the password.
    pub fn parse(raw: &str) -> StoreResult<Self> {
        let raw = raw.trim();
        if raw == "memory://" || raw == "memory:" {
            return Ok(Self::Memory);
        }
        if raw == "sqlite::memory:" || raw == "sqlite://:memory:" {
            return Ok(Self::SqliteMemory);
        }
        if let Some(path) = raw.strip_prefix("sqlite://").or_else(|| raw.strip_prefix("sqlite:")) {
            let path = path.split('?').next().unwrap_or_default();
            if path.is_empty() {
                return Err(StoreError::Invalid(
                    "sqlite url needs a file path, as in sqlite://helix.db".into(),
                ));
            }
            return Ok(Self::Sqlite(PathBuf::from(path)));
        }
        let Some((scheme, _)) = raw.split_once("://") else {
            return Err(StoreError::Invalid(format!(
                "{:?} is not a store url; use mysql://user@host/database, sqlite://file.db or memory://",
                redact_unparsed(raw)
            )));
        };
        match scheme.to_ascii_lowercase().as_str() {
            "mysql" | "mariadb" => {}
            other => {
                return Err(StoreError::Invalid(format!(
                    "unknown store scheme {other:?}; use mysql://, mariadb://, sqlite:// or memory://"
                )));
            }
        }
        let mut url = url::Url::parse(raw).map_err(|e| {
            StoreError::Invalid(format!("malformed mysql url {:?}: {e}", redact_unparsed(raw)))
        })?;
        if url.scheme() != "mysql" {
            // mysql_async only knows `mysql://`; the scheme is interchangeable.
            let rebuilt = format!("mysql{}", &url.as_str()[url.scheme().len()..]);
            url = url::Url::parse(&rebuilt)
                .map_err(|e| StoreError::Invalid(format!("malformed mysql url: {e}")))?;
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(StoreError::Invalid(format!("mysql url {} has no host", redact(&url))));
        }
        let database = url.path().trim_start_matches('/');
        if database.is_empty() || database.contains('/') {
            return Err(StoreError::Invalid(format!(
                "mysql url {} must name one database, as in mysql://user@host:3306/helix",
                redact(&url)
            )));
        }
        Ok(Self::Mysql(url))
    }

    /// The URL as it may be shown: the password replaced by `***`.
    pub fn redacted(&self) -> String {
        match self {
            Self::Mysql(url) => redact(url),
            Self::Sqlite(path) => format!("sqlite://{}", path.display()),
            Self::SqliteMemory => "sqlite::memory:".to_owned(),
            Self::Memory => "memory://".to_owned(),
        }
    }
}

fn redact(url: &url::Url) -> String {
    let mut url = url.clone();
    if url.password().is_some() {
        // Setting a password only fails for URLs that cannot have one, which a parsed
        // mysql:// URL with a host always can.
        let _ = url.set_password(Some("***"));
    }
    url.to_string()
}

/// Best-effort redaction of a string that did not parse as a URL: drops everything between
/// `://` and the last `@`.
fn redact_unparsed(raw: &str) -> String {
    match (raw.find("://"), raw.rfind('@')) {
        (Some(start), Some(at)) if at > start => format!("{}://***{}", &raw[..start], &raw[at..]),
        _ if raw.contains('@') => "***".to_owned(),
        _ => raw.to_owned(),
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreUrl({})", self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_scheme() {
        assert_eq!(StoreUrl::parse("memory://").ok(), Some(StoreUrl::Memory));
        assert_eq!(StoreUrl::parse("sqlite::memory:").ok(), Some(StoreUrl::SqliteMemory));
        assert_eq!(StoreUrl::parse("sqlite://helix.db").ok(), Some(StoreUrl::Sqlite("helix.db".into())));
        assert_eq!(StoreUrl::parse("sqlite:///tmp/h.db").ok(), Some(StoreUrl::Sqlite("/tmp/h.db".into())));
        let url = StoreUrl::parse("mariadb://root@127.0.0.1:3306/test").expect("parses");
        assert!(matches!(&url, StoreUrl::Mysql(u) if u.scheme() == "mysql" && u.path() == "/test"));
    }

    #[test]
    fn refuses_bad_urls_with_clear_messages() {
        let cases = [
            ("", "not a store url"),
            ("helix.db", "not a store url"),
            ("postgres://localhost/db", "unknown store scheme"),
            ("mysql://", "has no host"),
            ("mysql://root@:3306/db", "malformed mysql url"),
            ("mysql://root@127.0.0.1:3306", "must name one database"),
            ("mysql://root@127.0.0.1:3306/", "must name one database"),
            ("mysql://root@host:notaport/db", "malformed mysql url"),
            ("sqlite://", "needs a file path"),
        ];
        for (raw, expected) in cases {
            match StoreUrl::parse(raw) {
                Err(StoreError::Invalid(msg)) => assert!(msg.contains(expected), "{raw:?}: {msg}"),
                other => panic!("{raw:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn passwords_never_show() {
        let url = StoreUrl::parse("mysql://app:hunter2@db:3306/helix").expect("parses");
        assert!(!url.to_string().contains("hunter2"));
        assert!(!format!("{url:?}").contains("hunter2"));
        for raw in
            ["mysql://app:hunter2@db:notaport/x", "mysql://app:hunter2@db:3306", "pg://app:hunter2@db/x"]
        {
            let err = StoreUrl::parse(raw).expect_err("bad url").to_string();
            assert!(!err.contains("hunter2"), "{raw}: {err}");
        }
    }
}
