//! Destination drivers for eds.
//!
//! This crate holds the change-event model ([`event`]), the schema model ([`schema`]), the
//! [`driver::Driver`] trait, and one module per destination, each behind a cargo feature of the
//! same name and registered in one line of `REGISTERED`: [`find`]`(scheme)?.open(url)` is all a
//! caller needs. It never depends on `eds-wal`: drivers see decoded change events, not log records.

pub mod conformance;
pub mod driver;
pub mod event;
#[cfg(feature = "file")]
pub mod file;
pub mod form;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "mysql")]
pub mod mysql;
pub mod number;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod schema;
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlserver"))]
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
    #[cfg(feature = "kafka")]
    Registered { description: &kafka::DESCRIPTION, open: kafka::open },
];

/// Every driver compiled into this build, in a stable order.
pub fn descriptions() -> Vec<&'static driver::Description> {
    REGISTERED.iter().map(|r| r.description).collect()
}

/// The driver for a URL scheme or one of its aliases (case-insensitive): `find(scheme)?.open(url)`.
pub fn find(scheme: &str) -> Option<Registered> {
    REGISTERED.iter().copied().find(|r| {
        r.description.scheme.eq_ignore_ascii_case(scheme)
            || r.description.aliases.iter().any(|a| a.eq_ignore_ascii_case(scheme))
    })
}
