//! Checks every driver must pass, shared so each driver's tests run the same ones against their
//! real destination. Each returns a message naming what went wrong instead of panicking.

use crate::driver::{Batch, Driver, Kind};
use std::fmt::Debug;

/// Delivering a batch twice leaves the same content as delivering it once (a replay after a
/// crash is normal). `snapshot` reads the destination's whole content.
pub async fn replay_is_harmless<S: PartialEq + Debug>(
    driver: &dyn Driver,
    batch: Batch<'_>,
    snapshot: impl Fn() -> S,
) -> Result<(), String> {
    let name = driver.describe().name;
    driver.write(batch).await.map_err(|e| format!("{name}: first write failed: {e}"))?;
    let once = snapshot();
    driver.write(batch).await.map_err(|e| format!("{name}: replayed write failed: {e}"))?;
    let twice = snapshot();
    if once != twice {
        return Err(format!("{name}: a replayed batch changed the destination:\nonce:  {once:?}\ntwice: {twice:?}"));
    }
    Ok(())
}

/// The description is complete and consistent with the batches the driver accepts.
pub fn description_is_complete(driver: &dyn Driver) -> Result<(), String> {
    let d = driver.describe();
    let mut problems = Vec::new();
    if d.name.is_empty() || d.help.is_empty() {
        problems.push("name and help must be set");
    }
    if !d.example_url.starts_with(&format!("{}://", d.scheme)) {
        problems.push("the example URL must use the driver's scheme");
    }
    if d.kind == Kind::Stream && d.needs_schema {
        problems.push("a stream destination does not create tables, so it needs no schema");
    }
    let l = driver.limits();
    if l.max_rows == 0 || l.max_bytes == 0 {
        problems.push("limits must allow at least one row and one byte");
    }
    match problems.is_empty() {
        true => Ok(()),
        false => Err(format!("{}: {}", d.name, problems.join("; "))),
    }
}
