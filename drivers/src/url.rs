//! URL helpers shared by eds and its drivers: eds's own query parameters, the one function that
//! masks secrets in URLs for messages and logs, and what counts as this machine.

/// Whether a query key is eds's own (`name`, `start`, `overflow`, `eds-…`), read by the drain and
/// never handed to a database client.
pub fn is_eds_param(key: &str) -> bool {
    matches!(key, "name" | "start" | "overflow") || key.starts_with("eds-")
}

/// Schemes whose user info without a password is itself a secret (a NATS token).
const TOKEN_SCHEMES: &[&str] = &["nats", "tls", "ws", "wss"];

/// Whether a query parameter named `key` holds a secret.
fn secret_param(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "pwd", "secret", "token", "key", "sig", "credential"].iter().any(|s| key.contains(s))
}

/// The text with every secret of the URLs in it replaced by `***`, for messages and logs: the
/// password of the user info (`user:***@host`), a NATS token given as the user info
/// (`nats://***@host`), and query parameters named like a secret (`password=`, `pwd=`,
/// `…secret…`, `…token…`, `…key…`, `sig=`). A comma-separated list of URLs (as NATS takes) is
/// masked URL by URL; text without `://` is read as a URL's authority (`user:pass@host:port`).
/// This is the one masking function: everything eds prints about a URL goes through it.
pub fn redact(text: &str) -> String {
    split_urls(text).iter().map(|u| redact_one(u)).collect::<Vec<_>>().join(",")
}

/// Splits a comma-separated list of URLs at the commas that start another URL or authority
/// (commas inside a query, such as `options=-c a=1,b=2`, stay).
fn split_urls(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    for (i, _) in text.match_indices(',') {
        let next = text.get(i + 1..).unwrap_or("");
        let scheme_len = next.find("://").unwrap_or(usize::MAX);
        let scheme_like = next
            .get(..scheme_len)
            .is_some_and(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c)));
        // Without schemes, a list is `host:port,host:port`: then every comma separates.
        if scheme_like || !text.contains("://") {
            parts.push(text.get(start..i).unwrap_or(""));
            start = i + 1;
        }
    }
    parts.push(text.get(start..).unwrap_or(""));
    parts
}

fn redact_one(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let mut authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    if !rest.get(..authority_end).unwrap_or("").contains('@') {
        // A hand-typed password holding a raw `/`, `?` or `#` (`snowflake://u:Pa#ss@acct/db`):
        // the user information then runs to the first `@` after a `:`.
        if let Some(at) = rest.find('@').filter(|&at| rest.get(..at).is_some_and(|u| u.contains(':'))) {
            let after = rest.get(at..).unwrap_or("");
            authority_end = at + after.find(['/', '?', '#']).unwrap_or(after.len());
        }
    }
    let (authority, tail) = rest.split_at(authority_end);
    let token_scheme = scheme.is_some_and(|s| TOKEN_SCHEMES.iter().any(|t| s.eq_ignore_ascii_case(t)));
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let masked = match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***"),
                None if token_scheme || scheme.is_none() => "***".to_owned(),
                None => userinfo.to_owned(),
            };
            format!("{masked}@{host}")
        }
        None => authority.to_owned(),
    };
    let (path, query) = match tail.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (tail, None),
    };
    // A connection string in the path (`eventhub://host/;SharedAccessKeyName=…;SharedAccessKey=…`):
    // its secret parts are masked as query parameters are; the key's name is not a secret.
    let path = match path.split_once(';') {
        Some((before, parts)) => {
            let parts: Vec<String> = parts
                .split(';')
                .map(|part| match part.split_once('=') {
                    Some((k, _)) if secret_param(k) && !k.to_ascii_lowercase().ends_with("keyname") => {
                        format!("{k}=***")
                    }
                    _ => part.to_owned(),
                })
                .collect();
            format!("{before};{}", parts.join(";"))
        }
        None => path.to_owned(),
    };
    let tail = match query {
        Some(query) => {
            let pairs: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if secret_param(k) => format!("{k}=***"),
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", pairs.join("&"))
        }
        None => path,
    };
    match scheme {
        Some(scheme) => format!("{scheme}://{authority}{tail}"),
        None => format!("{authority}{tail}"),
    }
}

/// `s` percent-escaped as one URL component: RFC 3986's unreserved bytes (`A-Z a-z 0-9 - . _ ~`)
/// stay, every other byte becomes `%XX`.
pub fn escape_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Percent-decodes `s` (`+` stays a plus, as in a URL path); `None` when an escape is malformed or
/// the result is not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The host of a URL (or of `host[:port]`), without user info, port or brackets.
pub fn host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(bracketed) = hostport.strip_prefix('[') {
        return bracketed.split(']').next().unwrap_or("");
    }
    hostport.split(':').next().unwrap_or("")
}

/// Whether `host` is this machine (where TLS defaults to off).
pub fn is_local_host(host: &str) -> bool {
    matches!(host.to_ascii_lowercase().as_str(), "localhost" | "127.0.0.1" | "::1" | "[::1]")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_keep_only_unreserved_bytes() {
        assert_eq!(escape_component("0b6c-11ef_A.b~"), "0b6c-11ef_A.b~");
        assert_eq!(escape_component("../x?y z/é"), "..%2Fx%3Fy%20z%2F%C3%A9");
    }

    #[test]
    fn secrets_are_masked_and_nothing_else() {
        for (url, masked) in [
            ("postgres://user:secret@db:5432/x", "postgres://user:***@db:5432/x"),
            ("postgres://user@db/x", "postgres://user@db/x"),
            ("file:///var/eds/out", "file:///var/eds/out"),
            ("nats://tok3n@connect.example:4222", "nats://***@connect.example:4222"),
            ("nats://u:p4ss@a:4222,nats://b:4222", "nats://u:***@a:4222,nats://b:4222"),
            ("u:p4ss@a:4222,b:4222", "u:***@a:4222,b:4222"),
            ("tok3n@a:4222", "***@a:4222"),
            ("mysql://r:pw@h/db?start=bogus&password=pw2&x=1", "mysql://r:***@h/db?start=bogus&password=***&x=1"),
            (
                "s3://b/p?access-key-id=AKIA&secret-access-key=s3cr&region=eu",
                "s3://b/p?access-key-id=***&secret-access-key=***&region=eu",
            ),
            ("postgres://u:pw@h/d?options=-c%20a%3D1,b%3D2", "postgres://u:***@h/d?options=-c%20a%3D1,b%3D2"),
            ("sqlserver://sa:p@ss:w0rd@db/x", "sqlserver://sa:***@db/x"),
            ("snowflake://svc:Pa#ss@acct/DB", "snowflake://svc:***@acct/DB"),
            ("snowflake://svc:a/b?c@acct/DB/SCH?warehouse=w", "snowflake://svc:***@acct/DB/SCH?warehouse=w"),
            ("postgres://h/db?application_name=a@b", "postgres://h/db?application_name=a@b"),
            (
                "eventhub://ns.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey=k3y+/=;EntityPath=hub?name=e",
                "eventhub://ns.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey=***;EntityPath=hub?name=e",
            ),
            (
                "eventhub://ns/;SharedAccessSignature=SharedAccessSignature sr=a&sig=s1g&se=1&skn=send;EntityPath=h",
                "eventhub://ns/;SharedAccessSignature=***;EntityPath=h",
            ),
        ] {
            assert_eq!(redact(url), masked, "{url}");
        }
    }

    #[test]
    fn hosts_are_exact() {
        assert_eq!(host("nats://u:p@127.0.0.1:4222"), "127.0.0.1");
        assert_eq!(host("nats://[::1]:4222"), "::1");
        assert_eq!(host("localhost:4222"), "localhost");
        assert_eq!(host("nats://localhost.evil.example:4222"), "localhost.evil.example");
        assert!(is_local_host(host("nats://localhost:4222")));
        assert!(!is_local_host(host("nats://localhost.evil.example:4222")));
        assert!(!is_local_host(host("nats://u:localhost@remote:4222")));
    }
}
