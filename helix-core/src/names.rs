//! Validated names of domains, queues and clusters, and the validated partition count.
//!
//! A name is 1 to [`MAX_NAME_LEN`] ASCII characters from `A–Z a–z 0–9 _ - . :`, starting with a
//! letter or a digit. The set is wide enough for dotted and namespaced names
//! (`orders.eu-west:v2`) and narrow enough to be safe in URLs, file names, metric labels and
//! log lines. Characters that are legal here but special in SQL (`_` is a `LIKE` wildcard,
//! `--` starts a comment) are always bound as parameters and stored verbatim.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The longest legal name, in bytes (every legal character is one byte).
pub const MAX_NAME_LEN: usize = 64;

/// The largest number of partitions a queue may have.
///
/// Every partition is one row in the assignment table and one actor in a worker; 65,536 keeps
/// a single queue's assignment well within one coordinator tick.
pub const MAX_PARTITIONS: u32 = 65_536;

/// Why a name or a partition count was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name was empty.
    #[error("{kind} name must not be empty")]
    Empty {
        /// What was being named (`domain`, `queue`, `cluster`).
        kind: &'static str,
    },
    /// The name was longer than [`MAX_NAME_LEN`].
    #[error("{kind} name is {len} bytes long, the maximum is {max}")]
    TooLong {
        /// What was being named.
        kind: &'static str,
        /// The length that was given.
        len: usize,
        /// The maximum length.
        max: usize,
    },
    /// The name contained a character outside the legal set.
    #[error(
        "{kind} name contains {ch:?} at position {position}; allowed are A-Z a-z 0-9 _ - . : and the first character must be a letter or a digit"
    )]
    IllegalCharacter {
        /// What was being named.
        kind: &'static str,
        /// The offending character.
        ch: char,
        /// Its position, counted in characters from 0.
        position: usize,
    },
    /// The partition count was 0 or above [`MAX_PARTITIONS`].
    #[error("partition count {count} is out of range, it must be between 1 and {max}")]
    PartitionCount {
        /// The count that was given.
        count: u64,
        /// The maximum.
        max: u32,
    },
}

fn validate(kind: &'static str, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { kind });
    }
    for (position, ch) in name.chars().enumerate() {
        let legal = ch.is_ascii_alphanumeric() || (position > 0 && matches!(ch, '_' | '-' | '.' | ':'));
        if !legal {
            return Err(NameError::IllegalCharacter { kind, ch, position });
        }
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong { kind, len: name.len(), max: MAX_NAME_LEN });
    }
    Ok(())
}

macro_rules! validated_name {
    ($(#[$doc:meta])* $ty:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $ty(String);

        impl $ty {
            /// Validates `name` and wraps it.
            ///
            /// # Errors
            /// [`NameError`] when the name is empty, too long or has an illegal character.
            pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
                let name = name.into();
                validate($kind, &name)?;
                Ok(Self(name))
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $ty {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $ty {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::new(s)
            }
        }

        impl From<$ty> for String {
            fn from(name: $ty) -> String {
                name.0
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

validated_name!(
    /// The name of a domain, the namespace that holds queues (`domain_order`).
    ///
    /// ```
    /// use helix_core::DomainName;
    /// assert!(DomainName::new("domain_order").is_ok());
    /// assert!(DomainName::new("").is_err());
    /// assert!(DomainName::new("o'brien").is_err());
    /// ```
    DomainName,
    "domain"
);
validated_name!(
    /// The name of a queue (task list) inside a domain (`food_order`).
    QueueName,
    "queue"
);
validated_name!(
    /// The name of a cluster: the key of its coordinator lease. Most deployments use one
    /// cluster per database and keep the default, `helix`.
    ClusterName,
    "cluster"
);

impl Default for ClusterName {
    fn default() -> Self {
        Self("helix".to_owned())
    }
}

/// A number of partitions between 1 and [`MAX_PARTITIONS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u32")]
pub struct PartitionCount(u32);

impl PartitionCount {
    /// Validates `count`.
    ///
    /// # Errors
    /// [`NameError::PartitionCount`] when `count` is 0 or above [`MAX_PARTITIONS`].
    ///
    /// ```
    /// use helix_core::PartitionCount;
    /// assert_eq!(PartitionCount::new(50).unwrap().get(), 50);
    /// assert!(PartitionCount::new(0).is_err());
    /// assert!(PartitionCount::new(1_000_000).is_err());
    /// ```
    pub fn new(count: u64) -> Result<Self, NameError> {
        if count == 0 || count > u64::from(MAX_PARTITIONS) {
            return Err(NameError::PartitionCount { count, max: MAX_PARTITIONS });
        }
        // In range, so the conversion cannot truncate.
        Ok(Self(count as u32))
    }

    /// The count.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<u64> for PartitionCount {
    type Error = NameError;
    fn try_from(count: u64) -> Result<Self, Self::Error> {
        Self::new(count)
    }
}

impl From<PartitionCount> for u32 {
    fn from(count: PartitionCount) -> u32 {
        count.0
    }
}

impl fmt::Display for PartitionCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_legal_names_verbatim() {
        for name in ["a", "domain_order", "orders.eu-west:v2", "a--b", "x_y", "9lives"] {
            assert_eq!(QueueName::new(name).map(|n| n.as_str().to_owned()), Ok(name.to_owned()));
        }
        assert!(QueueName::new("a".repeat(MAX_NAME_LEN)).is_ok());
    }

    #[test]
    fn refuses_illegal_names() {
        assert_eq!(DomainName::new(""), Err(NameError::Empty { kind: "domain" }));
        assert!(matches!(
            DomainName::new("a".repeat(MAX_NAME_LEN + 1)),
            Err(NameError::TooLong { len: 65, .. })
        ));
        for bad in ["o'brien", "a b", "a;drop", "_lead", "-lead", "é", "a\"b", "a/b", "a\0b"] {
            assert!(
                matches!(QueueName::new(bad), Err(NameError::IllegalCharacter { .. })),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn serde_round_trips_and_validates() {
        let name: QueueName = serde_json::from_str("\"food_order\"").expect("valid");
        assert_eq!(serde_json::to_string(&name).expect("serializes"), "\"food_order\"");
        assert!(serde_json::from_str::<QueueName>("\"bad name\"").is_err());
        assert!(serde_json::from_str::<PartitionCount>("0").is_err());
        assert_eq!(serde_json::from_str::<PartitionCount>("50").map(PartitionCount::get).ok(), Some(50));
    }

    #[test]
    fn partition_count_bounds() {
        assert!(PartitionCount::new(1).is_ok());
        assert!(PartitionCount::new(u64::from(MAX_PARTITIONS)).is_ok());
        assert!(PartitionCount::new(u64::from(MAX_PARTITIONS) + 1).is_err());
        assert!(PartitionCount::new(0).is_err());
    }
}
