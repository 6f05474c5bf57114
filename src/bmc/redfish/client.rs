//! The HTTPS client for one BMC: where it is (base URL from the configured address) and how its
//! certificate is checked (system roots by default, a CA file, or no check only when asked).

use crate::bmc::BmcError;
use crate::model::TlsVerify;
use reqwest::redirect;
use std::time::Duration;
use url::Url;

/// The base URL (`scheme://host:port/`) from a BMC address: a URL with an `http` or `https`
/// scheme (its own port wins), or a bare host that gets `https://` and `port`.
pub fn base_url(address: &str, port: u16) -> Result<Url, String> {
    let address = address.trim();
    let text = if address.contains("://") {
        address.to_string()
    } else {
        format!("https://{address}:{port}")
    };
    let url = Url::parse(&text).map_err(|_| {
        format!("'{address}' is not a Redfish address (expected https://host[:port])")
    })?;
    // Never echo an address that carries credentials.
    if !url.username().is_empty() || url.password().is_some() {
        return Err("the Redfish address must not contain a user name or password".to_string());
    }
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("'{address}' must start with https:// or http://"));
    }
    let host = url.host_str().filter(|h| !h.is_empty());
    let (Some(host), Some(port)) = (host, url.port_or_known_default()) else {
        return Err(format!("'{address}' names no host"));
    };
    Url::parse(&format!("{}://{host}:{port}/", url.scheme()))
        .map_err(|_| format!("'{address}' is not a Redfish address"))
}

/// A client with the per-request timeout and TLS policy. `CaFile` trusts only that bundle, as
/// Ironic's `redfish_verify_ca = <path>` does; `Insecure` is the only way to skip the check.
pub fn build_client(tls: &TlsVerify, timeout: Duration) -> Result<reqwest::Client, BmcError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Follow redirects only on the same origin: a session token must not leave the BMC.
    let policy = redirect::Policy::custom(|attempt| {
        let same = attempt.previous().first().map(Url::origin) == Some(attempt.url().origin());
        if same && attempt.previous().len() < 5 {
            attempt.follow()
        } else {
            attempt.stop()
        }
    });
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(policy)
        .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")));
    match tls {
        TlsVerify::System => {}
        TlsVerify::CaFile(path) => {
            let pem = std::fs::read(path).map_err(|e| {
                BmcError::Unreachable(format!("cannot read the CA file {path}: {}", e.kind()))
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|_| {
                BmcError::Unreachable(format!("the CA file {path} holds no PEM certificate"))
            })?;
            if certs.is_empty() {
                return Err(BmcError::Unreachable(format!(
                    "the CA file {path} holds no PEM certificate"
                )));
            }
            builder = builder.tls_certs_only(certs);
        }
        TlsVerify::Insecure => builder = builder.tls_danger_accept_invalid_certs(true),
    }
    builder
        .build()
        .map_err(|_| BmcError::Protocol("could not set up the HTTPS client".to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_from_addresses() {
        let cases = [
            ("https://10.0.0.5", 443, Ok("https://10.0.0.5/")),
            (
                "https://bmc.example:8443/redfish/v1",
                443,
                Ok("https://bmc.example:8443/"),
            ),
            ("http://127.0.0.1:8000", 443, Ok("http://127.0.0.1:8000/")),
            ("http://127.0.0.1", 8000, Ok("http://127.0.0.1/")),
            ("bmc-7", 8443, Ok("https://bmc-7:8443/")),
            ("[fd00::5]", 443, Ok("https://[fd00::5]/")),
            ("ftp://bmc", 443, Err("https://")),
            ("https://admin:pw@bmc", 443, Err("must not contain")),
            ("https://", 443, Err("not a Redfish address")),
            ("http://exa mple", 443, Err("not a Redfish address")),
        ];
        for (address, port, want) in cases {
            match (base_url(address, port), want) {
                (Ok(url), Ok(want)) => assert_eq!(url.as_str(), want, "{address}"),
                (Err(e), Err(word)) => {
                    assert!(e.contains(word), "{address}: {e}");
                    assert!(!e.contains("pw@"), "{e}");
                }
                (got, want) => panic!("{address}: got {got:?}, want {want:?}"),
            }
        }
    }
}
