//! S3 destination: every event as an object, `<prefix><table>/<unix seconds>-<primary key>.json`
//! (EDS's layout, spec §7.6), in AWS S3 or any S3-compatible store (`endpoint=`), or one object
//! per batch with `format=ndjson`. A stream destination.
//!
//! Invariant: nothing is overwritten. An object is created only if its name is free
//! (`If-None-Match: *`); a name is a pure function of the event, its LSN and what is already
//! there (see [`crate::naming`]), so replaying a batch after a crash writes nothing new. With
//! `format=ndjson` the name is the batch's first and last LSN: a replay cut differently after a
//! crash may write an object whose range overlaps an earlier one's (every event is still there,
//! some twice).
//!
//! What the tests against moto cannot prove: real AWS authentication and IAM policies, and the
//! conditional-write semantics of every S3-compatible store (a store that ignores `If-None-Match`
//! would let a second event of a key in the same second overwrite the first).

mod config;
pub mod moto;
mod sink;
#[cfg(test)]
mod tests;

/// The AWS SDK this driver is built on, for tests and benchmarks that read objects back.
pub use aws_sdk_s3 as sdk;
pub use config::{
    parse, process_env, Format, Keys, Provider, S3Config, DEFAULT_REGION, DEFAULT_TIMEOUT, DEFAULT_UPLOAD_TASKS,
    DESCRIPTION, GCS_ENDPOINT,
};
pub use sink::{classify, client, S3Driver};

/// The S3 driver for an `s3://` URL (the registry's entry point).
pub fn open(url: &str) -> Result<std::sync::Arc<dyn crate::driver::Driver>, crate::driver::DriverError> {
    Ok(std::sync::Arc::new(S3Driver::new(parse(url, &process_env)?)))
}
