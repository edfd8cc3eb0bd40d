//! `eds import` and what it leaves for the server: the bulk export of a shop's tables loaded into
//! a destination, and the per-table timestamps that make streaming take over exactly where the
//! export ended. A running server makes the same import for HQ's `import` (`in_server`).

pub mod command;
pub mod download;
pub mod files;
pub mod in_server;
pub mod load;
pub mod progress;
pub mod timestamps;

#[cfg(test)]
mod tests;
