//! URL and self-description of the file destination.

use crate::driver::{ConfigField, Description, DriverError, ErrorClass, FieldKind, Kind};
use std::path::PathBuf;

/// What the file destination says about itself.
pub const DESCRIPTION: Description = Description {
    name: "File",
    scheme: "file",
    aliases: &[],
    example_url: "file:///var/eds/out",
    help: "Writes every change event, exactly as received, to <dir>/<table>/<unix seconds>-<primary key>.json. \
A second event for the same key in the same second goes to <unix seconds>-<primary key>+<lsn>.json. \
The directory may be absolute (file:///var/eds/out) or relative to the working directory (file://out).",
    fields: &[ConfigField {
        name: "directory",
        kind: FieldKind::Directory,
        required: true,
        default: None,
        help: "directory to write into; created when missing",
    }],
    kind: Kind::Stream,
    needs_schema: false,
};

/// The directory of a `file://` URL: `file:///abs/dir` is absolute, `file://dir` and
/// `file://./dir` are relative to the working directory (EDS's own example, `file://folder`, did
/// not work). A query string (eds's destination options) is ignored here.
pub fn directory_from_url(url: &str) -> Result<PathBuf, DriverError> {
    let rest = url
        .strip_prefix("file://")
        .ok_or_else(|| DriverError::new(ErrorClass::Config, format!("{url:?} is not a file:// URL")))?;
    let path = rest.split(['?', '#']).next().unwrap_or("");
    if path.is_empty() || path == "/" {
        return Err(DriverError::new(
            ErrorClass::Config,
            format!("{url:?} names no directory (use file:///absolute/dir or file://relative/dir)"),
        ));
    }
    Ok(PathBuf::from(path))
}
