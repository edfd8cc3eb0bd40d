//! Everything that talks to Shopmonkey HQ: the API client, the session (start, renew, end), the
//! NATS credentials it issues, heartbeats, notifications and log uploads.

pub mod creds;
