//! EDS's URL masking (`MaskURL`, spec §3.2): what HQ is shown of a destination URL, and what eds
//! prints of a URL HQ hands out (a pre-signed upload URL carries its signature in the query).
//!
//! Invariant: the output never holds more than the first half of a user name, password, path
//! or query value. An unparsable URL is masked as a whole.

/// `s` with its first ⌊len/2⌋ characters kept and the rest replaced by `*`: `foobar` → `foo***`,
/// `foo` → `f**`, `f` → `*`, `` → ``. (EDS counts bytes; this counts characters, which is the
/// same for ASCII and never cuts a character in two.)
pub fn mask(s: &str) -> String {
    let len = s.chars().count();
    let keep = len / 2;
    let mut out: String = s.chars().take(keep).collect();
    out.extend(std::iter::repeat_n('*', len - keep));
    out
}

/// `url` masked as EDS's `MaskURL` does: `scheme://` + masked user + `:` + masked password (when
/// there is one) + `@` (when there is user info) + the host as written + `/` + the masked path
/// without its leading slash (nothing for an empty path or `/`) + `?` + `key=masked value` for
/// every query key, a key's values joined by `,`, the pairs sorted (as text) and joined by `&`.
/// User info, path and query are percent-decoded first; the fragment is dropped. Example:
/// `s3://bucket/folder?region=us-west-2&access-key-id=AKIAIOSFODNN7EXAMPLE` →
/// `s3://bucket/fol***?access-key-id=AKIAIOSFOD**********&region=us-w*****`.
///
/// A text Go's URL parser refuses (a bad percent escape in the path or user info, a leading
/// `:`) is masked as a whole with [`mask`], as EDS masks arguments it cannot parse.
pub fn mask_url(url: &str) -> String {
    let Some(u) = GoUrl::parse(url) else { return mask(url) };
    let mut out = format!("{}://", u.scheme);
    if let Some((user, password)) = &u.user {
        out.push_str(&mask(user));
        if let Some(password) = password {
            out.push(':');
            out.push_str(&mask(password));
        }
        out.push('@');
    }
    out.push_str(u.host);
    if !u.path.is_empty() && u.path != "/" {
        out.push('/');
        if let Some(rest) = u.path.strip_prefix('/') {
            out.push_str(&mask(rest));
        }
    }
    let mut pairs: Vec<String> =
        u.query().into_iter().map(|(k, values)| format!("{k}={}", mask(&values.join(",")))).collect();
    pairs.sort();
    if !pairs.is_empty() {
        out.push('?');
        out.push_str(&pairs.join("&"));
    }
    out
}

/// The percent-decoded path of `url` (Go's `url.URL.Path`): `/logs/eds-1.log.gz` of
/// `https://bucket.example/logs/eds-1.log.gz?sig=…`. `None` when the URL does not parse.
pub fn url_path(url: &str) -> Option<String> {
    GoUrl::parse(url).map(|u| u.path)
}

/// The parts of a URL as Go's `url.Parse` splits them (the subset `MaskURL` reads).
struct GoUrl<'a> {
    /// Lowercased, as Go does.
    scheme: String,
    /// Decoded user name and password.
    user: Option<(String, Option<String>)>,
    /// As written, port included.
    host: &'a str,
    /// Decoded.
    path: String,
    /// As written (still escaped).
    raw_query: &'a str,
}

impl<'a> GoUrl<'a> {
    fn parse(raw: &'a str) -> Option<GoUrl<'a>> {
        let raw = raw.split_once('#').map_or(raw, |(before, _)| before);
        let (scheme, rest) = split_scheme(raw)?;
        // `x?` with a single `?` is Go's ForceQuery: no query.
        let (rest, raw_query) = match rest.split_once('?') {
            Some((before, after)) => (before, after),
            None => (rest, ""),
        };
        let mut u = GoUrl { scheme: scheme.to_ascii_lowercase(), user: None, host: "", path: String::new(), raw_query };
        if !rest.starts_with('/') && !scheme.is_empty() {
            // Opaque (`mailto:x`): no host, no path.
            return Some(u);
        }
        let mut path = rest;
        if (!scheme.is_empty() || !rest.starts_with("///")) && rest.starts_with("//") {
            let after = rest.get(2..).unwrap_or("");
            let end = after.find('/').unwrap_or(after.len());
            let (authority, tail) = after.split_at(end);
            path = tail;
            match authority.rsplit_once('@') {
                Some((userinfo, host)) => {
                    u.host = host;
                    u.user = Some(match userinfo.split_once(':') {
                        Some((user, password)) => (unescape(user, false)?, Some(unescape(password, false)?)),
                        None => (unescape(userinfo, false)?, None),
                    });
                }
                None => u.host = authority,
            }
        }
        u.path = unescape(path, false)?;
        Some(u)
    }

    /// Go's `url.ParseQuery`, keeping what it keeps: pairs split at `&`, empty ones and ones with
    /// `;` or a bad escape skipped, `+` read as a space. Keys in their first order.
    fn query(&self) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for pair in self.raw_query.split('&') {
            if pair.is_empty() || pair.contains(';') {
                continue;
            }
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let (Some(k), Some(v)) = (unescape(k, true), unescape(v, true)) else { continue };
            match out.iter_mut().find(|(key, _)| *key == k) {
                Some((_, values)) => values.push(v),
                None => out.push((k, vec![v])),
            }
        }
        out
    }
}

/// Go's `getScheme`: a letter, then letters, digits, `+`, `-` or `.`, then `:`. No scheme (and
/// the whole text as the rest) when another character comes first; `None` for a leading `:`.
fn split_scheme(raw: &str) -> Option<(&str, &str)> {
    for (i, c) in raw.char_indices() {
        match c {
            'a'..='z' | 'A'..='Z' => {}
            '0'..='9' | '+' | '-' | '.' if i > 0 => {}
            ':' if i == 0 => return None,
            ':' => return Some((raw.get(..i)?, raw.get(i + 1..)?)),
            _ => return Some(("", raw)),
        }
    }
    Some(("", raw))
}

/// Percent-decodes `s` (`+` as a space when `query`); `None` for an escape without two hex digits.
fn unescape(s: &str, query: bool) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let hex = |j: usize| bytes.get(j).and_then(|&h| char::from(h).to_digit(16));
                let (hi, lo) = (hex(i + 1)?, hex(i + 2)?);
                out.push(u8::try_from(hi * 16 + lo).ok()?);
                i += 3;
            }
            b'+' if query => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_keeps_the_first_half() {
        assert_eq!(mask("foobar"), "foo***");
        assert_eq!(mask("foo"), "f**");
        assert_eq!(mask("f"), "*");
        assert_eq!(mask(""), "");
        assert_eq!(mask("héllo!"), "hél***");
    }

    /// EDS's own `TestMaskUrl` and the URLs of its `TestMaskArguments`.
    #[test]
    fn eds_examples() {
        for (url, masked) in [
            ("http://user:password@localhost:8080/path?query=1", "http://us**:pass****@localhost:8080/pa**?query=*"),
            (
                "snowflake://FOO:thisisapassword@TFLXCJY-LU41011/TEST/PUBLIC",
                "snowflake://F**:thisisa********@TFLXCJY-LU41011/TEST/******",
            ),
            (
                "s3://bucket/folder?region=us-west-2&access-key-id=AKIAIOSFODNN7EXAMPLE&secret-access-key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                "s3://bucket/fol***?access-key-id=AKIAIOSFOD**********&region=us-w*****&secret-access-key=wJalrXUtnFEMI/K7MDEN********************",
            ),
            ("https://alice:bob@example.com/a/b?foo=bar", "https://al***:b**@example.com/a**?foo=b**"),
            (
                "s3://bucket/folder?region=us-west-2&access-key-id=AKIAIOSFODNN7EXAMPLE&secret-access",
                "s3://bucket/fol***?access-key-id=AKIAIOSFOD**********&region=us-w*****&secret-access=",
            ),
            ("mysql://user:password@localhost:3306/db?query=1", "mysql://us**:pass****@localhost:3306/d*?query=*"),
        ] {
            assert_eq!(mask_url(url), masked, "{url}");
        }
    }

    #[test]
    fn shapes() {
        // No path, a bare `/`, no user info, a user without a password.
        assert_eq!(mask_url("http://example.com"), "http://example.com");
        assert_eq!(mask_url("http://example.com/"), "http://example.com");
        assert_eq!(mask_url("postgres://bob@db:5432/shop"), "postgres://b**@db:5432/sh**");
        // Decoded before masking; repeated keys joined by `,`; `+` is a space; fragment dropped;
        // the scheme lowercased, the host as written.
        assert_eq!(
            mask_url("HTTP://u%40x:p%3Aw@Host.Example/a%2Fb?k=1&k=2&q=a+b#frag"),
            "http://u**:p**@Host.Example/a**?k=1**&q=a**"
        );
        // Pairs sorted as text (`a-b=` before `a=`), not by key.
        assert_eq!(mask_url("x://h?a=1234&a-b=1234"), "x://h?a-b=12**&a=12**");
        // A pre-signed upload URL: the signature keeps only its first half.
        let signed =
            "https://bucket.s3.amazonaws.com/eds/logs/eds-1.log.gz?X-Amz-Signature=0123456789abcdef&X-Amz-Expires=3600";
        let masked = mask_url(signed);
        assert_eq!(
            masked,
            "https://bucket.s3.amazonaws.com/eds/logs/e***********?X-Amz-Expires=36**&X-Amz-Signature=01234567********"
        );
        assert!(!masked.contains("89abcdef"));
    }

    #[test]
    fn unparsable_text_is_masked_whole() {
        assert_eq!(mask_url("http://host/%zz"), mask("http://host/%zz"));
        assert_eq!(mask_url(":nope"), ":n***");
        // Bad escapes in the query only drop that pair, as Go does.
        assert_eq!(mask_url("http://h/p?a=%zz&b=12"), "http://h/*?b=1*");
    }

    #[test]
    fn paths_of_urls() {
        assert_eq!(url_path("https://b.example/eds/a%20b.log.gz?sig=1").as_deref(), Some("/eds/a b.log.gz"));
        assert_eq!(url_path("https://b.example").as_deref(), Some(""));
        assert_eq!(url_path("http://h/%zz"), None);
    }
}
