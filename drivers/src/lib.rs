//! Destination drivers for eds.
//!
//! This crate holds the change-event model ([`event`]), the schema model ([`schema`]), the
//! [`driver::Driver`] trait, and one module per destination, each behind a cargo feature of the
//! same name and registered in one line of `REGISTERED`: [`find`]`(scheme)?.open(url)` is all a
//! caller needs. It never depends on `eds-wal`: drivers see decoded change events, not log records.

pub mod conformance;
pub mod driver;
pub mod event;
#[cfg(feature = "eventhub")]
pub mod eventhub;
#[cfg(feature = "file")]
pub mod file;
pub mod form;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(any(feature = "file", feature = "s3"))]
pub mod naming;
pub mod number;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "s3")]
pub mod s3;
pub mod schema;
#[cfg(feature = "snowflake")]
pub mod snowflake;
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlserver", feature = "snowflake"))]
pub mod sql;
#[cfg(feature = "sqlserver")]
pub mod sqlserver;
#[cfg(any(feature = "postgres", feature = "mysql"))]
mod sqltx;
pub mod url;

/// A driver of this build: what it says about itself, and how to open it for a URL. Dereferences
/// to its [`driver::Description`].
#[derive(Clone, Copy)]
pub struct Registered {
    description: &'static driver::Description,
    open: fn(&str) -> Result<std::sync::Arc<dyn driver::Driver>, driver::DriverError>,
}

impl Registered {
    /// What the driver says about itself.
    pub fn description(&self) -> &'static driver::Description {
        self.description
    }

    /// The driver for `url` (its scheme is this driver's). Connects lazily: a bad URL is a
    /// [`driver::ErrorClass::Config`] error here, an unreachable destination shows at the first write.
    pub fn open(&self, url: &str) -> Result<std::sync::Arc<dyn driver::Driver>, driver::DriverError> {
        (self.open)(url)
    }
}

impl std::ops::Deref for Registered {
    type Target = driver::Description;
    fn deref(&self) -> &driver::Description {
        self.description
    }
}

impl std::fmt::Debug for Registered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registered").field("scheme", &self.description.scheme).finish_non_exhaustive()
    }
}

/// The drivers compiled into this build, in a stable order: one line per driver, behind its cargo
/// feature (see `drivers/README.md` for adding one).
const REGISTERED: &[Registered] = &[
    #[cfg(feature = "file")]
    Registered { description: &file::DESCRIPTION, open: file::open },
    #[cfg(feature = "postgres")]
    Registered { description: &postgres::DESCRIPTION, open: postgres::open },
    #[cfg(feature = "mysql")]
    Registered { description: &mysql::DESCRIPTION, open: mysql::open },
    #[cfg(feature = "sqlserver")]
    Registered { description: &sqlserver::DESCRIPTION, open: sqlserver::open },
    #[cfg(feature = "s3")]
    Registered { description: &s3::DESCRIPTION, open: s3::open },
    #[cfg(feature = "kafka")]
    Registered { description: &kafka::DESCRIPTION, open: kafka::open },
    #[cfg(feature = "snowflake")]
    Registered { description: &snowflake::DESCRIPTION, open: snowflake::open },
    #[cfg(feature = "snowflake")]
    Registered { description: &snowflake::KEYPAIR_DESCRIPTION, open: snowflake::open_keypair },
    #[cfg(feature = "eventhub")]
    Registered { description: &eventhub::DESCRIPTION, open: eventhub::open },
];

/// Every driver compiled into this build, in a stable order.
pub fn descriptions() -> Vec<&'static driver::Description> {
    REGISTERED.iter().map(|r| r.description).collect()
}

/// Every scheme (and alias) of EDS's destinations, with the cargo feature of eds's driver for it
/// (`None`: eds has no driver for it yet).
const SCHEMES: &[(&str, Option<&str>)] = &[
    ("file", Some("file")),
    ("postgres", Some("postgres")),
    ("postgresql", Some("postgres")),
    ("mysql", Some("mysql")),
    ("mariadb", Some("mysql")),
    ("sqlserver", Some("sqlserver")),
    ("mssql", Some("sqlserver")),
    ("s3", Some("s3")),
    ("kafka", Some("kafka")),
    ("snowflake", Some("snowflake")),
    ("snowflake-keypair", Some("snowflake")),
    ("eventhub", Some("eventhub")),
];

/// Why [`find`] has no driver for a scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// eds has a driver for it, but this build was made without its cargo feature.
    NotBuilt {
        /// The cargo feature that brings it.
        feature: &'static str,
    },
    /// An EDS destination eds has no driver for yet.
    NotYet,
    /// No destination of EDS or eds has this scheme (a typo?).
    Unknown,
}

/// Why there is no driver for `scheme` in this build, or `None` when [`find`] has one.
pub fn missing(scheme: &str) -> Option<Missing> {
    if find(scheme).is_some() {
        return None;
    }
    Some(match SCHEMES.iter().find(|(s, _)| s.eq_ignore_ascii_case(scheme)) {
        Some((_, Some(feature))) => Missing::NotBuilt { feature },
        Some((_, None)) => Missing::NotYet,
        None => Missing::Unknown,
    })
}

/// Every scheme eds knows of (built into this build or not), for messages.
pub fn known_schemes() -> impl Iterator<Item = &'static str> {
    SCHEMES.iter().map(|(s, _)| *s)
}

/// The driver for a URL scheme or one of its aliases (case-insensitive): `find(scheme)?.open(url)`.
pub fn find(scheme: &str) -> Option<Registered> {
    REGISTERED.iter().copied().find(|r| {
        r.description.scheme.eq_ignore_ascii_case(scheme)
            || r.description.aliases.iter().any(|a| a.eq_ignore_ascii_case(scheme))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_registered_scheme_is_known_and_the_rest_say_why_they_are_missing() {
        for d in descriptions() {
            for s in std::iter::once(d.scheme).chain(d.aliases.iter().copied()) {
                assert!(known_schemes().any(|k| k == s), "{s} is registered but not in SCHEMES");
                assert_eq!(missing(s), None, "{s}");
                assert_eq!(missing(&s.to_ascii_uppercase()), None, "{s}");
            }
        }
        #[cfg(not(feature = "snowflake"))]
        assert_eq!(missing("snowflake"), Some(Missing::NotBuilt { feature: "snowflake" }));
        #[cfg(feature = "snowflake")]
        assert_eq!(missing("snowflake-keypair"), None);
        #[cfg(not(feature = "eventhub"))]
        assert_eq!(missing("eventhub"), Some(Missing::NotBuilt { feature: "eventhub" }));
        #[cfg(feature = "eventhub")]
        assert_eq!(missing("eventhub"), None);
        assert_eq!(missing("postgress"), Some(Missing::Unknown));
        for (scheme, feature) in SCHEMES {
            match (find(scheme), feature) {
                (Some(_), Some(_)) => {}
                (None, Some(f)) => assert_eq!(missing(scheme), Some(Missing::NotBuilt { feature: f })),
                (None, None) => assert_eq!(missing(scheme), Some(Missing::NotYet)),
                (Some(_), None) => panic!("{scheme} has a driver: name its feature in SCHEMES"),
            }
        }
    }
}
