//! A failed request told in words an operator can act on. reqwest's own text for a refused TLS
//! handshake is "error sending request for url (…)"; the reason is several sources down the error
//! chain (reqwest → hyper → `io::Error` → `rustls::Error`). [`explain`] walks that chain: a
//! certificate problem becomes one line starting with `TLS:` ([`tls_reason`], pure), anything
//! else the chain's messages joined, so that "connection refused" is not hidden either.

use std::error::Error;

/// The text for a request error sent to `url`.
pub fn explain(error: &(dyn Error + 'static), url: &str) -> String {
    match find_rustls(error) {
        Some(tls) => tls_reason(tls, &host_of(url)),
        None => chain_text(error),
    }
}

/// The first `rustls::Error` in the chain. An `io::Error`'s `source()` skips the error it wraps
/// (it returns the wrapped error's source), so the walk looks inside with `get_ref` first.
pub fn find_rustls<'a>(error: &'a (dyn Error + 'static)) -> Option<&'a rustls::Error> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        current = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn Error + 'static)),
            None => e.source(),
        };
    }
    None
}

/// What a refused handshake with the upstream at `host` means.
pub fn tls_reason(error: &rustls::Error, host: &str) -> String {
    use rustls::CertificateError as C;
    match error {
        rustls::Error::InvalidCertificate(certificate) => match certificate {
            C::UnknownIssuer => {
                "TLS: upstream certificate not trusted (unknown issuer: not signed \
                                 by a CA in caFile or the system roots)"
                    .to_string()
            }
            C::NotValidForName => {
                format!("TLS: upstream certificate is not valid for {host}")
            }
            C::NotValidForNameContext { presented, .. } => format!(
                "TLS: upstream certificate is not valid for {host} (it is for {})",
                presented
                    .iter()
                    .map(|n| plain_name(n))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            C::Expired | C::ExpiredContext { .. } => {
                "TLS: upstream certificate has expired".to_string()
            }
            C::NotValidYet | C::NotValidYetContext { .. } => {
                "TLS: upstream certificate is not valid yet (clock skew?)".to_string()
            }
            C::Revoked => "TLS: upstream certificate is revoked".to_string(),
            C::BadSignature => "TLS: upstream certificate has a bad signature".to_string(),
            C::InvalidPurpose | C::InvalidPurposeContext { .. } => {
                "TLS: upstream certificate is not for server authentication".to_string()
            }
            other => format!("TLS: upstream certificate rejected ({other:?})"),
        },
        rustls::Error::NoCertificatesPresented => {
            "TLS: the upstream presented no certificate".to_string()
        }
        rustls::Error::AlertReceived(alert) => {
            format!("TLS: the upstream aborted the handshake ({alert:?} alert)")
        }
        rustls::Error::InvalidMessage(_) => format!(
            "TLS: handshake with the upstream failed ({error}); does it serve HTTPS at this port?"
        ),
        other => format!("TLS: handshake with the upstream failed ({other})"),
    }
}

/// The messages of the chain joined by `: `, a message left out when the one before already
/// says it.
pub fn chain_text(error: &(dyn Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut current = error.source();
    while let Some(e) = current {
        let message = e.to_string();
        if !message.is_empty() && !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        current = e.source();
    }
    text
}

/// A name as webpki lists it (`DnsName("a.example")`), plain (`a.example`).
fn plain_name(listed: &str) -> &str {
    listed
        .strip_prefix("DnsName(\"")
        .and_then(|n| n.strip_suffix("\")"))
        .unwrap_or(listed)
}

/// The host of a URL (`https://host:port/path`), or the URL itself when it has none.
fn host_of(url: &str) -> String {
    reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_else(|| url.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;
    use rustls::CertificateError;

    /// An error whose source is `inner`, as hyper wraps the connector's error.
    #[derive(Debug)]
    struct Wrapped(&'static str, Box<dyn Error + Send + Sync>);
    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl Error for Wrapped {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(self.1.as_ref())
        }
    }

    fn as_reqwest_would(tls: rustls::Error) -> Wrapped {
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
        Wrapped(
            "error sending request for url (https://127.0.0.1:9/x)",
            Box::new(Wrapped("client error (Connect)", Box::new(io))),
        )
    }

    #[test]
    fn an_unknown_issuer_deep_in_the_chain_is_named() {
        let e = as_reqwest_would(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer,
        ));
        let text = explain(&e, "https://127.0.0.1:9");
        assert!(
            text.starts_with("TLS: upstream certificate not trusted (unknown issuer"),
            "{text}"
        );
    }

    #[test]
    fn a_certificate_for_another_name_says_which_names_it_has() {
        let e = as_reqwest_would(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForNameContext {
                expected: ServerName::try_from("127.0.0.1").unwrap().to_owned(),
                presented: vec!["DnsName(\"other.example\")".into()],
            },
        ));
        assert_eq!(
            explain(&e, "https://127.0.0.1:1661/"),
            "TLS: upstream certificate is not valid for 127.0.0.1 (it is for other.example)"
        );
        let bare = rustls::Error::InvalidCertificate(CertificateError::NotValidForName);
        assert_eq!(
            tls_reason(&bare, "origin.example"),
            "TLS: upstream certificate is not valid for origin.example"
        );
    }

    #[test]
    fn other_handshake_failures_are_tls_too() {
        let expired = rustls::Error::InvalidCertificate(CertificateError::Expired);
        assert_eq!(
            tls_reason(&expired, "h"),
            "TLS: upstream certificate has expired"
        );
        let alert = rustls::Error::AlertReceived(rustls::AlertDescription::HandshakeFailure);
        assert!(tls_reason(&alert, "h").contains("HandshakeFailure alert"));
        let plain = rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType);
        assert!(tls_reason(&plain, "h").contains("does it serve HTTPS"));
    }

    #[test]
    fn without_tls_the_chain_is_joined_and_repeats_left_out() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let e = Wrapped(
            "error sending request",
            Box::new(Wrapped(
                "client error (Connect)",
                Box::new(Wrapped("connection refused", Box::new(io))),
            )),
        );
        assert_eq!(
            explain(&e, "http://127.0.0.1:9"),
            "error sending request: client error (Connect): connection refused"
        );
    }
}
