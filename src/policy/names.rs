//! Kubernetes name syntax checks: label keys and values, DNS names, IANA service (port) names.

/// Maximum length of a label value and of the name part of a qualified name.
const MAX_NAME_LEN: usize = 63;
/// Maximum length of a DNS-1123 subdomain.
const MAX_SUBDOMAIN_LEN: usize = 253;
/// Maximum length of an IANA service name.
const MAX_SVC_NAME_LEN: usize = 15;

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`, at most 63 characters, non-empty.
fn is_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() || b.len() > MAX_NAME_LEN {
        return false;
    }
    let alnum = |c: &u8| c.is_ascii_alphanumeric();
    alnum(&b[0])
        && alnum(&b[b.len() - 1])
        && b.iter()
            .all(|c| alnum(c) || matches!(c, b'-' | b'_' | b'.'))
}

/// A Kubernetes qualified name (label key): `[prefix/]name` where prefix is a DNS-1123
/// subdomain and name is at most 63 characters of `[A-Za-z0-9][-A-Za-z0-9_.]*[A-Za-z0-9]`.
pub fn is_qualified_name(s: &str) -> bool {
    match s.split_once('/') {
        None => is_name_part(s),
        Some((prefix, name)) => {
            !prefix.is_empty() && is_dns1123_subdomain(prefix) && is_name_part(name)
        }
    }
}

/// A Kubernetes label value: empty, or a valid name part (at most 63 characters).
pub fn is_label_value(s: &str) -> bool {
    s.is_empty() || is_name_part(s)
}

/// A DNS-1123 label: at most 63 lowercase alphanumerics or '-', starting and ending alphanumeric.
pub fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() || b.len() > MAX_NAME_LEN {
        return false;
    }
    let lower_alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    lower_alnum(&b[0])
        && lower_alnum(&b[b.len() - 1])
        && b.iter().all(|c| lower_alnum(c) || *c == b'-')
}

/// A DNS-1123 subdomain: dot-separated DNS-1123 labels, at most 253 characters.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_SUBDOMAIN_LEN && s.split('.').all(is_dns1123_label)
}

/// An IANA service name (RFC 6335 section 5.1), as used for named ports: 1 to 15 characters,
/// alphanumerics and '-', at least one letter, no leading, trailing or doubled '-'.
/// Kubernetes requires lowercase (`allow_upper = false`); Cilium accepts either case and
/// compares case-insensitively (`allow_upper = true`).
pub fn is_iana_svc_name(s: &str, allow_upper: bool) -> bool {
    let b = s.as_bytes();
    if b.is_empty() || b.len() > MAX_SVC_NAME_LEN {
        return false;
    }
    let letter = |c: &u8| c.is_ascii_lowercase() || (allow_upper && c.is_ascii_uppercase());
    b.iter()
        .all(|c| letter(c) || c.is_ascii_digit() || *c == b'-')
        && b.iter().any(letter)
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && !s.contains("--")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qualified_names() {
        for ok in [
            "app",
            "app.kubernetes.io/name",
            "a",
            "A_b.c-d",
            "example.com/x",
        ] {
            assert!(is_qualified_name(ok), "{ok}");
        }
        for bad in [
            "",
            "-app",
            "app-",
            "a b",
            "/app",
            "Example.com/x",
            "a/b/c",
            &"x".repeat(64),
        ] {
            assert!(!is_qualified_name(bad), "{bad}");
        }
    }

    #[test]
    fn label_values() {
        assert!(is_label_value(""));
        assert!(is_label_value("web-1"));
        assert!(!is_label_value("web 1"));
        assert!(!is_label_value(&"v".repeat(64)));
    }

    #[test]
    fn svc_names() {
        for ok in ["http", "http-8080", "h2c", "a1"] {
            assert!(is_iana_svc_name(ok, false), "{ok}");
        }
        for bad in [
            "",
            "8080",
            "-http",
            "http-",
            "ht--tp",
            "Http",
            "abcdefghijklmnop",
            "h_p",
        ] {
            assert!(!is_iana_svc_name(bad, false), "{bad}");
        }
        assert!(is_iana_svc_name("Http", true));
    }

    #[test]
    fn dns_names() {
        assert!(is_dns1123_label("kube-system"));
        assert!(!is_dns1123_label("Kube"));
        assert!(is_dns1123_subdomain("allow.web-1"));
        assert!(!is_dns1123_subdomain("allow..web"));
    }
}
