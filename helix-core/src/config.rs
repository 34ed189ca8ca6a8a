//! The cluster's timing configuration, with the defaults and validation rules of the protocol
//! (`docs/protocol.md`).
//!
//! Durations are written in human form in configuration files:
//!
//! ```
//! use helix_core::ClusterConfig;
//!
//! let config: ClusterConfig = serde_json::from_str(r#"{ "session_timeout": "6s", "heartbeat_interval": "2s" }"#).unwrap();
//! config.validate().unwrap();
//! assert_eq!(config.session_timeout.as_secs(), 6);
//! assert_eq!(config.coordinator_lease.as_secs(), 3); // the default
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Timings shared by every node of a cluster. Every field has a default; [`validate`]
/// rejects combinations that cannot work.
///
/// [`validate`]: ClusterConfig::validate
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// How often a worker renews its lease. Each renewal is one statement (one round trip on
    /// MySQL) and its answer says whether the worker's assignments moved, so this is also how
    /// long a grant can wait before its new owner learns of it. Default 500 ms: with the
    /// default session timeout of 3 s, a killed worker's partitions run elsewhere within the
    /// session timeout + 0.5 s (`docs/protocol.md`, "How a grant reaches its owner").
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// How long a worker's lease lasts after a renewal; a worker that has not renewed for
    /// this long is dead. Default 3 s.
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// How long the coordinator lease lasts after a renewal. Default 3 s.
    #[serde(with = "humantime_serde")]
    pub coordinator_lease: Duration,
    /// How often the leader renews its lease. Default 1 s.
    #[serde(with = "humantime_serde")]
    pub coordinator_renew_interval: Duration,
    /// How much earlier than its lease's end a worker or the leader stops acting on its own
    /// account, to absorb clock-rate differences and the renewal's round trip. Default 500 ms.
    #[serde(with = "humantime_serde")]
    pub safety_margin: Duration,
    /// How long the leader waits for any one store call or allocator answer of a
    /// reconciliation round before it gives that call up: a call that times out fails the
    /// queue it served for this round (the round goes on with the others), or the whole round
    /// when it served every queue (the failure sweep, the list of queues, the allocator). At
    /// most half of `coordinator_lease - safety_margin`. Default 1 s.
    ///
    /// A leader whose rounds make no progress for `coordinator_lease - safety_margin` (each
    /// one failed as a whole or took that long) steps down and releases the lease, and waits
    /// one `coordinator_lease` before it bids again, so that a standby takes over.
    #[serde(with = "humantime_serde")]
    pub coordinator_call_timeout: Duration,
    /// How often the leader reconciles membership and assignments. Default 500 ms.
    #[serde(with = "humantime_serde")]
    pub reconcile_interval: Duration,
    /// How often the leader re-evaluates every queue even when nothing seems to have changed.
    /// Default 10 s.
    #[serde(with = "humantime_serde")]
    pub full_reevaluation_interval: Duration,
    /// How long a revoked partition may take to finish its in-flight work before it is
    /// cancelled. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// How long the leader waits for an owner to hand over a revoked partition before it
    /// cancels the revocation (the owner keeps the partition). Default 30 s.
    #[serde(with = "humantime_serde")]
    pub revoke_timeout: Duration,
    /// How long the planner leaves a partition alone after its revocation timed out.
    /// Default 60 s.
    #[serde(with = "humantime_serde")]
    pub revoke_cooldown: Duration,
    /// How long the partitions of a worker that left or died wait for it to come back under
    /// the same identity before they move (static membership, as in Kafka; Helix's delayed
    /// rebalance). While it is above zero, a graceful leave keeps the worker's partitions
    /// (drained, stopped) instead of releasing them, so a rolling restart moves nothing; the
    /// price is that a worker that does not come back leaves its partitions idle for this
    /// long. Default zero: partitions move at once.
    #[serde(with = "humantime_serde")]
    pub rejoin_delay: Duration,
    /// How long the history of events is kept: while a coordinator node leads, it deletes
    /// the events older than this (on the store's clock) every tenth of it, at most hourly.
    /// Default 7 days; zero keeps every event forever.
    #[serde(with = "humantime_serde")]
    pub event_retention: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_millis(500),
            session_timeout: Duration::from_secs(3),
            coordinator_lease: Duration::from_secs(3),
            coordinator_renew_interval: Duration::from_secs(1),
            safety_margin: Duration::from_millis(500),
            coordinator_call_timeout: Duration::from_secs(1),
            reconcile_interval: Duration::from_millis(500),
            full_reevaluation_interval: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
            revoke_timeout: Duration::from_secs(30),
            revoke_cooldown: Duration::from_secs(60),
            rejoin_delay: Duration::ZERO,
            event_retention: Duration::from_secs(7 * 24 * 60 * 60),
        }
    }
}

/// Why a [`ClusterConfig`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A duration was zero.
    #[error("{field} must be greater than zero")]
    Zero {
        /// The field's name.
        field: &'static str,
    },
    /// Two durations are in a relation that cannot work.
    #[error("{field} ({value:?}) must be {relation} {other} ({other_value:?})")]
    Relation {
        /// The field that is out of bounds.
        field: &'static str,
        /// Its value.
        value: Duration,
        /// The relation it must satisfy, such as "at most half of".
        relation: &'static str,
        /// The field it is compared with.
        other: &'static str,
        /// That field's value.
        other_value: Duration,
    },
    /// A duration is too large to be meaningful (more than a day).
    #[error("{field} ({value:?}) is longer than a day")]
    Absurd {
        /// The field's name.
        field: &'static str,
        /// Its value.
        value: Duration,
    },
}

const A_DAY: Duration = Duration::from_secs(24 * 60 * 60);

impl ClusterConfig {
    /// Checks that every duration is positive (`rejoin_delay` may be zero) and not absurd, that a worker renews at least
    /// twice per session timeout, that the leader renews at least twice per lease, and that
    /// the safety margin leaves time to act.
    ///
    /// # Errors
    /// The first rule that is broken, naming the fields involved.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fields = [
            ("heartbeat_interval", self.heartbeat_interval),
            ("session_timeout", self.session_timeout),
            ("coordinator_lease", self.coordinator_lease),
            ("coordinator_renew_interval", self.coordinator_renew_interval),
            ("safety_margin", self.safety_margin),
            ("coordinator_call_timeout", self.coordinator_call_timeout),
            ("reconcile_interval", self.reconcile_interval),
            ("full_reevaluation_interval", self.full_reevaluation_interval),
            ("drain_timeout", self.drain_timeout),
            ("revoke_timeout", self.revoke_timeout),
            ("revoke_cooldown", self.revoke_cooldown),
        ];
        for (field, value) in fields {
            if value.is_zero() {
                return Err(ConfigError::Zero { field });
            }
        }
        for (field, value) in fields.into_iter().chain([("rejoin_delay", self.rejoin_delay)]) {
            if value > A_DAY {
                return Err(ConfigError::Absurd { field, value });
            }
        }
        let at_most_half = |field, value: Duration, other, other_value: Duration| {
            if value > other_value / 2 {
                Err(ConfigError::Relation { field, value, relation: "at most half of", other, other_value })
            } else {
                Ok(())
            }
        };
        at_most_half("heartbeat_interval", self.heartbeat_interval, "session_timeout", self.session_timeout)?;
        at_most_half(
            "coordinator_renew_interval",
            self.coordinator_renew_interval,
            "coordinator_lease",
            self.coordinator_lease,
        )?;
        let less_than = |field, value: Duration, other, other_value: Duration| {
            if value >= other_value {
                Err(ConfigError::Relation { field, value, relation: "less than", other, other_value })
            } else {
                Ok(())
            }
        };
        less_than(
            "safety_margin",
            self.safety_margin,
            "session_timeout - heartbeat_interval",
            self.session_timeout - self.heartbeat_interval,
        )?;
        less_than(
            "safety_margin",
            self.safety_margin,
            "coordinator_lease - coordinator_renew_interval",
            self.coordinator_lease - self.coordinator_renew_interval,
        )?;
        less_than("drain_timeout", self.drain_timeout, "revoke_timeout", self.revoke_timeout)?;
        at_most_half(
            "coordinator_call_timeout",
            self.coordinator_call_timeout,
            "coordinator_lease - safety_margin",
            self.coordinator_lease.saturating_sub(self.safety_margin),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(ClusterConfig::default().validate(), Ok(()));
    }

    #[test]
    fn rejects_zero_and_absurd_durations() {
        let config = ClusterConfig { reconcile_interval: Duration::ZERO, ..Default::default() };
        assert_eq!(config.validate(), Err(ConfigError::Zero { field: "reconcile_interval" }));
        let config = ClusterConfig { revoke_cooldown: Duration::from_secs(100_000), ..Default::default() };
        assert!(matches!(config.validate(), Err(ConfigError::Absurd { field: "revoke_cooldown", .. })));
        let config = ClusterConfig { rejoin_delay: Duration::from_secs(100_000), ..Default::default() };
        assert!(matches!(config.validate(), Err(ConfigError::Absurd { field: "rejoin_delay", .. })));
    }

    #[test]
    fn rejects_heartbeat_slower_than_half_the_timeout() {
        let config = ClusterConfig { heartbeat_interval: Duration::from_secs(2), ..Default::default() };
        let err = config.validate().expect_err("2s heartbeat with a 3s timeout");
        assert!(matches!(err, ConfigError::Relation { field: "heartbeat_interval", .. }));
        assert!(err.to_string().contains("at most half of session_timeout"), "{err}");
    }

    #[test]
    fn rejects_margin_that_leaves_no_time() {
        let config = ClusterConfig { safety_margin: Duration::from_secs(2), ..Default::default() };
        assert!(matches!(config.validate(), Err(ConfigError::Relation { field: "safety_margin", .. })));
        let config = ClusterConfig { drain_timeout: Duration::from_secs(40), ..Default::default() };
        assert!(matches!(config.validate(), Err(ConfigError::Relation { field: "drain_timeout", .. })));
    }

    #[test]
    fn rejects_a_call_timeout_that_does_not_fit_twice_in_the_lease() {
        let config =
            ClusterConfig { coordinator_call_timeout: Duration::from_millis(1_300), ..Default::default() };
        let err = config.validate().expect_err("1.3 s against 3 s - 0.5 s");
        assert!(matches!(err, ConfigError::Relation { field: "coordinator_call_timeout", .. }), "{err}");
    }

    #[test]
    fn parses_human_durations_and_refuses_unknown_fields() {
        let config: ClusterConfig =
            serde_json::from_str(r#"{"heartbeat_interval":"500ms","session_timeout":"2s"}"#).expect("parses");
        assert_eq!(config.heartbeat_interval, Duration::from_millis(500));
        assert_eq!(config.validate(), Ok(()));
        assert!(serde_json::from_str::<ClusterConfig>(r#"{"hearbeat":"1s"}"#).is_err());
        assert!(serde_json::from_str::<ClusterConfig>(r#"{"session_timeout":"soon"}"#).is_err());
    }
}
