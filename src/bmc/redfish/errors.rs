//! Turns HTTP-level failures into [`BmcError`]s an operator can act on. Only short, known-safe
//! texts are kept (an I/O error kind, a TLS reason, the BMC's own message): never a raw reqwest
//! error, whose Display carries the URL and whose Debug carries far more.

use crate::bmc::BmcError;
use serde_json::Value;
use std::error::Error as StdError;
use std::io;
use std::time::Duration;

/// Maps a failed request (no HTTP status came back) to a [`BmcError`].
pub fn from_reqwest(err: &reqwest::Error, host: &str, timeout: Duration) -> BmcError {
    if err.is_timeout() {
        return BmcError::Timeout(millis(timeout));
    }
    if let Some(mapped) = classify_chain(err, host, timeout) {
        return mapped;
    }
    if err.is_connect() {
        return BmcError::Unreachable(format!("cannot connect to {host}"));
    }
    if err.is_body() || err.is_decode() {
        return BmcError::Protocol(format!("the reply from {host} could not be read"));
    }
    if err.is_redirect() {
        return BmcError::Protocol(format!("{host} redirected to another address or too often"));
    }
    BmcError::Protocol(format!(
        "{host} closed the connection without a valid reply"
    ))
}

/// Walks an error's sources for an I/O or TLS cause. Separate from reqwest so it can be tested
/// with hand-built chains.
pub fn classify_chain(
    err: &(dyn StdError + 'static),
    host: &str,
    timeout: Duration,
) -> Option<BmcError> {
    let mut current: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls_error(tls, host));
        }
        current = e.source();
        if let Some(io_err) = e.downcast_ref::<io::Error>() {
            if let Some(mapped) = from_io_kind(io_err, host, timeout) {
                return Some(mapped);
            }
            // io::Error's source() skips the error it wraps (a TLS failure travels as an
            // io::Error inside an io::Error), so descend into it by hand.
            if let Some(inner) = io_err.get_ref() {
                current = Some(inner as &(dyn StdError + 'static));
            }
        }
    }
    None
}

fn from_io_kind(err: &io::Error, host: &str, timeout: Duration) -> Option<BmcError> {
    use io::ErrorKind::*;
    match err.kind() {
        ConnectionRefused => Some(BmcError::Refused),
        TimedOut => Some(BmcError::Timeout(millis(timeout))),
        HostUnreachable | NetworkUnreachable | NetworkDown | AddrNotAvailable => Some(
            BmcError::Unreachable(format!("cannot connect to {host}: {}", err.kind())),
        ),
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => Some(
            BmcError::Protocol(format!("{host} closed the connection ({})", err.kind())),
        ),
        // Name resolution failures have no kind of their own; their text is short and plain.
        _ if err.to_string().contains("lookup address") => Some(BmcError::Unreachable(format!(
            "cannot resolve the host name {host}"
        ))),
        _ => None,
    }
}

fn tls_error(err: &rustls::Error, host: &str) -> BmcError {
    BmcError::Protocol(format!("TLS handshake with {host} failed: {err}"))
}

/// The error for an HTTP status that is not success. `body` is the reply, for the BMC's own
/// message (Redfish `error.message` or the first `@Message.ExtendedInfo` entry).
pub fn from_status(method: &str, path: &str, status: u16, body: &[u8]) -> BmcError {
    match status {
        401 | 403 => BmcError::WrongCredentials,
        404 => BmcError::Protocol(format!("{path} does not exist on this BMC (HTTP 404)")),
        412 => BmcError::Protocol(format!(
            "{path} changed while it was being updated (HTTP 412); try again"
        )),
        _ => {
            let detail = redfish_message(body)
                .map(|m| format!(": {m}"))
                .unwrap_or_default();
            BmcError::Protocol(format!("{method} {path} answered HTTP {status}{detail}"))
        }
    }
}

/// The BMC's own explanation from a Redfish error body, cut to a readable length.
pub fn redfish_message(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let error = value.get("error")?;
    let extended = error
        .get("@Message.ExtendedInfo")
        .and_then(|info| info.get(0))
        .and_then(|first| first.get("Message"))
        .and_then(Value::as_str);
    let text = extended.or_else(|| error.get("message").and_then(Value::as_str))?;
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    Some(if text.chars().count() > 200 {
        format!("{}…", text.chars().take(200).collect::<String>())
    } else {
        text.to_string()
    })
}

pub fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt;

    /// Stands in for hyper's connect error: a message plus an I/O source.
    #[derive(Debug)]
    struct Wrapper(io::Error);
    impl fmt::Display for Wrapper {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("tcp connect error")
        }
    }
    impl StdError for Wrapper {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn io_causes_map_to_plain_errors() {
        let t = Duration::from_millis(1500);
        // As hyper-rustls reports it: an io::Error(Other) around an io::Error(InvalidData).
        let tls = io::Error::other(io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        ));
        let dns =
            io::Error::other("failed to lookup address information: Name or service not known");
        let cases: Vec<(io::Error, Option<BmcError>)> = vec![
            (
                io::ErrorKind::ConnectionRefused.into(),
                Some(BmcError::Refused),
            ),
            (
                io::ErrorKind::TimedOut.into(),
                Some(BmcError::Timeout(1500)),
            ),
            (
                io::ErrorKind::HostUnreachable.into(),
                Some(BmcError::Unreachable(
                    "cannot connect to bmc:443: host unreachable".into(),
                )),
            ),
            (
                dns,
                Some(BmcError::Unreachable(
                    "cannot resolve the host name bmc:443".into(),
                )),
            ),
            (
                tls,
                Some(BmcError::Protocol(
                    "TLS handshake with bmc:443 failed: invalid peer certificate: UnknownIssuer"
                        .into(),
                )),
            ),
            (
                io::ErrorKind::ConnectionReset.into(),
                Some(BmcError::Protocol(
                    "bmc:443 closed the connection (connection reset)".into(),
                )),
            ),
            (io::ErrorKind::PermissionDenied.into(), None),
        ];
        for (io_err, want) in cases {
            let text = io_err.to_string();
            let wrapped = Wrapper(io_err);
            assert_eq!(classify_chain(&wrapped, "bmc:443", t), want, "{text}");
        }
    }

    #[test]
    fn statuses_map_to_plain_errors() {
        let body = br#"{"error": {"code": "Base.1.0.GeneralError", "message": "general",
            "@Message.ExtendedInfo": [{"Message": "The property Foo is read-only."}]}}"#;
        let cases: Vec<(u16, &[u8], BmcError)> = vec![
            (401, b"", BmcError::WrongCredentials),
            (403, b"", BmcError::WrongCredentials),
            (
                404,
                b"",
                BmcError::Protocol("/x does not exist on this BMC (HTTP 404)".into()),
            ),
            (
                412,
                b"",
                BmcError::Protocol(
                    "/x changed while it was being updated (HTTP 412); try again".into(),
                ),
            ),
            (
                400,
                body,
                BmcError::Protocol(
                    "PATCH /x answered HTTP 400: The property Foo is read-only.".into(),
                ),
            ),
            (
                500,
                b"<html>oops</html>",
                BmcError::Protocol("PATCH /x answered HTTP 500".into()),
            ),
            (
                500,
                br#"{"error": {"message": "  "}}"#,
                BmcError::Protocol("PATCH /x answered HTTP 500".into()),
            ),
        ];
        for (status, body, want) in cases {
            assert_eq!(from_status("PATCH", "/x", status, body), want, "{status}");
        }
    }

    #[test]
    fn long_messages_are_cut() {
        let long = "x".repeat(500);
        let body = serde_json::json!({"error": {"message": long}}).to_string();
        let message = redfish_message(body.as_bytes()).unwrap();
        assert_eq!(message.chars().count(), 201);
    }
}
