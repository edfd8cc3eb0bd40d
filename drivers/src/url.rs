//! URL helpers shared by the SQL drivers: eds's own query parameters, redaction for messages, and
//! what counts as this machine.

/// Whether a query key is eds's own (`name`, `start`, `overflow`, `eds-…`), read by the drain and
/// never handed to a database client.
pub fn is_eds_param(key: &str) -> bool {
    matches!(key, "name" | "start" | "overflow") || key.starts_with("eds-")
}

/// The URL with any password replaced by `***`, for messages: the one in the user info, and
/// query parameters named like a password (`password=`, `pwd=`).
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<not a URL>".to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            let masked = if userinfo.contains(':') { format!("{user}:***") } else { user.to_owned() };
            format!("{masked}@{host}")
        }
        None => authority.to_owned(),
    };
    // A password given as a query parameter is masked too.
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let pairs: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if k.to_ascii_lowercase().contains("password") || k.eq_ignore_ascii_case("pwd") => {
                        format!("{k}=***")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", pairs.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// Whether `host` is this machine (where TLS defaults to off).
pub fn is_local_host(host: &str) -> bool {
    matches!(host.to_ascii_lowercase().as_str(), "localhost" | "127.0.0.1" | "::1" | "[::1]")
}
