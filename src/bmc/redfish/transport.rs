//! Requests to one Redfish service: the session-or-basic login, one attempt per request (plus
//! one re-login when a session token has expired), and status → error mapping.

use super::client::{base_url, build_client};
use super::errors;
use crate::bmc::BmcError;
use crate::model::{Secret, TlsVerify};
use reqwest::Method;
use reqwest::header::{ACCEPT, ETAG, HeaderValue, IF_MATCH, LOCATION};
use serde_json::{Value, json};
use std::sync::Mutex;
use std::time::Duration;
use tracing::{debug, info};
use url::Url;

const SERVICE_ROOT: &str = "/redfish/v1/";
const DEFAULT_SESSIONS: &str = "/redfish/v1/SessionService/Sessions";

/// How the driver authenticates to the BMC, once it has found out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    /// `X-Auth-Token` from a Redfish session.
    Session,
    /// HTTP basic auth: the service has no session service (sushy-tools, some small BMCs).
    Basic,
}

#[derive(Clone, PartialEq)]
enum Auth {
    Unknown,
    Basic,
    Session { token: Secret, path: Option<String> },
}

/// One reply, read whole. Bodies of Redfish resources are small.
struct Reply {
    status: u16,
    etag: Option<String>,
    token: Option<Secret>,
    location: Option<String>,
    body: Vec<u8>,
}

pub struct Transport {
    client: reqwest::Client,
    base: Url,
    /// `host:port`, the only part of the address that goes into error messages.
    host: String,
    username: String,
    password: Secret,
    timeout: Duration,
    auth: Mutex<Auth>,
    /// Serialises logins so concurrent calls after an expiry log in once.
    login: tokio::sync::Mutex<()>,
}

impl Transport {
    pub fn new(
        address: &str,
        port: u16,
        username: &str,
        password: Secret,
        tls: &TlsVerify,
        timeout: Duration,
    ) -> Result<Self, BmcError> {
        let base = base_url(address, port).map_err(BmcError::Unreachable)?;
        let host = format!(
            "{}:{}",
            base.host_str().unwrap_or_default(),
            base.port_or_known_default().unwrap_or(port)
        );
        Ok(Self {
            client: build_client(tls, timeout)?,
            base,
            host,
            username: username.to_string(),
            password,
            timeout,
            auth: Mutex::new(Auth::Unknown),
            login: tokio::sync::Mutex::new(()),
        })
    }

    pub fn base(&self) -> &Url {
        &self.base
    }

    pub fn auth_method(&self) -> Option<AuthMethod> {
        match self.current() {
            Auth::Unknown => None,
            Auth::Basic => Some(AuthMethod::Basic),
            Auth::Session { .. } => Some(AuthMethod::Session),
        }
    }

    /// GET a resource: its JSON and its ETag, if the BMC sent one.
    pub async fn get_json(&self, path: &str) -> Result<(Value, Option<String>), BmcError> {
        let reply = self.request(Method::GET, path, None, None).await?;
        let value = serde_json::from_slice(&reply.body).map_err(|e| {
            BmcError::Protocol(format!("the reply to GET {path} is not JSON ({e})"))
        })?;
        Ok((value, reply.etag))
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<(), BmcError> {
        self.request(Method::POST, path, Some(body), None)
            .await
            .map(drop)
    }

    pub async fn patch(
        &self,
        path: &str,
        body: &Value,
        etag: Option<&str>,
    ) -> Result<(), BmcError> {
        self.request(Method::PATCH, path, Some(body), etag)
            .await
            .map(drop)
    }

    /// Ends the Redfish session, if there is one, so the BMC's few session slots are not used up.
    pub async fn logout(&self) -> Result<(), BmcError> {
        let _guard = self.login.lock().await;
        let auth = self.current();
        if let Auth::Session {
            path: Some(path), ..
        } = &auth
        {
            let reply = self
                .attempt(Method::DELETE, path, None, None, &auth)
                .await?;
            debug!(status = reply.status, "redfish session closed");
        }
        self.set(Auth::Unknown);
        Ok(())
    }

    /// One request with the current credentials; a 401 on a session token logs in again once.
    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        etag: Option<&str>,
    ) -> Result<Reply, BmcError> {
        let auth = self.authenticated().await?;
        let mut reply = self
            .attempt(method.clone(), path, body, etag, &auth)
            .await?;
        if reply.status == 401 && matches!(auth, Auth::Session { .. }) {
            info!(host = %self.host, "redfish session expired; logging in again");
            let fresh = self.relogin(&auth).await?;
            reply = self
                .attempt(method.clone(), path, body, etag, &fresh)
                .await?;
        }
        if (200..300).contains(&reply.status) {
            Ok(reply)
        } else {
            Err(errors::from_status(
                method.as_str(),
                path,
                reply.status,
                &reply.body,
            ))
        }
    }

    fn current(&self) -> Auth {
        self.auth.lock().map(|a| a.clone()).unwrap_or(Auth::Unknown)
    }

    fn set(&self, auth: Auth) {
        if let Ok(mut slot) = self.auth.lock() {
            *slot = auth;
        }
    }

    async fn authenticated(&self) -> Result<Auth, BmcError> {
        let auth = self.current();
        if auth != Auth::Unknown {
            return Ok(auth);
        }
        self.relogin(&Auth::Unknown).await
    }

    /// Logs in unless another call already replaced `stale` while this one waited.
    async fn relogin(&self, stale: &Auth) -> Result<Auth, BmcError> {
        let _guard = self.login.lock().await;
        let now = self.current();
        if now != *stale && now != Auth::Unknown {
            return Ok(now);
        }
        let fresh = self.login().await?;
        self.set(fresh.clone());
        Ok(fresh)
    }

    /// Finds the session service from the (unauthenticated) service root and opens a session;
    /// falls back to basic auth when there is none.
    async fn login(&self) -> Result<Auth, BmcError> {
        let root = self
            .attempt(Method::GET, SERVICE_ROOT, None, None, &Auth::Unknown)
            .await?;
        let sessions = match root.status {
            200 => {
                let root: Value = serde_json::from_slice(&root.body).map_err(|_| {
                    BmcError::Protocol("the Redfish service root is not JSON".to_string())
                })?;
                sessions_path(&root)
            }
            // Some BMCs guard even the service root: try the standard session path.
            401 | 403 => Some(DEFAULT_SESSIONS.to_string()),
            status => return Err(errors::from_status("GET", SERVICE_ROOT, status, &root.body)),
        };
        let Some(sessions) = sessions else {
            info!(host = %self.host, "redfish service has no session service; using basic auth");
            return Ok(Auth::Basic);
        };
        let credentials = json!({"UserName": self.username, "Password": self.password.expose()});
        let reply = self
            .attempt(
                Method::POST,
                &sessions,
                Some(&credentials),
                None,
                &Auth::Unknown,
            )
            .await?;
        match (reply.status, reply.token) {
            (200..=299, Some(token)) => {
                let path = serde_json::from_slice::<Value>(&reply.body)
                    .ok()
                    .and_then(|v| v.get("@odata.id")?.as_str().map(str::to_string))
                    .or_else(|| reply.location.and_then(|l| self.local_path(&l)));
                info!(host = %self.host, "redfish session opened");
                Ok(Auth::Session { token, path })
            }
            (200..=299, None) => Err(BmcError::Protocol(
                "session login succeeded but returned no X-Auth-Token".to_string(),
            )),
            (404 | 405, _) => {
                info!(host = %self.host, "redfish session login not available; using basic auth");
                Ok(Auth::Basic)
            }
            (status, _) => Err(errors::from_status("POST", &sessions, status, &reply.body)),
        }
    }

    /// A path on this BMC from a `Location` header (absolute path or same-origin URL).
    fn local_path(&self, location: &str) -> Option<String> {
        let url = self.base.join(location).ok()?;
        (url.origin() == self.base.origin()).then(|| url.path().to_string())
    }

    async fn attempt(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        etag: Option<&str>,
        auth: &Auth,
    ) -> Result<Reply, BmcError> {
        // Paths come from the BMC's own links: never let one point at another host.
        if !path.starts_with('/') || path.starts_with("//") {
            return Err(BmcError::Protocol(format!(
                "the BMC linked to '{path}', which is not a path on this BMC"
            )));
        }
        let url = self
            .base
            .join(path)
            .map_err(|_| BmcError::Protocol(format!("'{path}' is not a valid Redfish path")))?;
        let mut request = self
            .client
            .request(method.clone(), url)
            .header(ACCEPT, "application/json")
            .header("OData-Version", "4.0");
        match auth {
            Auth::Unknown => {}
            Auth::Basic => {
                request = request.basic_auth(&self.username, Some(self.password.expose()));
            }
            Auth::Session { token, .. } => {
                let mut value = HeaderValue::from_str(token.expose()).map_err(|_| {
                    BmcError::Protocol("the BMC issued an unusable session token".to_string())
                })?;
                value.set_sensitive(true);
                request = request.header("X-Auth-Token", value);
            }
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        if let Some(etag) = etag {
            request = request.header(IF_MATCH, etag);
        }
        let response = request
            .send()
            .await
            .map_err(|e| errors::from_reqwest(&e, &self.host, self.timeout))?;
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let etag = header(ETAG.as_str());
        let location = header(LOCATION.as_str());
        let token = header("x-auth-token").map(Secret::new);
        let body = response
            .bytes()
            .await
            .map_err(|e| errors::from_reqwest(&e, &self.host, self.timeout))?
            .to_vec();
        debug!(host = %self.host, %method, path, status, "redfish request");
        Ok(Reply {
            status,
            etag,
            token,
            location,
            body,
        })
    }
}

/// The session collection a service root links to, if it has a session service at all.
fn sessions_path(root: &Value) -> Option<String> {
    let link = root
        .pointer("/Links/Sessions/@odata.id")
        .and_then(Value::as_str);
    match link {
        Some(path) => Some(path.to_string()),
        None => root
            .get("SessionService")
            .map(|_| DEFAULT_SESSIONS.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_service_is_found_from_the_root() {
        let cases = [
            (
                json!({"Links": {"Sessions": {"@odata.id": "/redfish/v1/SessionService/Sessions"}}}),
                Some(DEFAULT_SESSIONS),
            ),
            (
                json!({"Links": {"Sessions": {"@odata.id": "/rf/Sessions"}}}),
                Some("/rf/Sessions"),
            ),
            (
                json!({"SessionService": {"@odata.id": "/redfish/v1/SessionService"}}),
                Some(DEFAULT_SESSIONS),
            ),
            (
                json!({"Systems": {"@odata.id": "/redfish/v1/Systems"}}),
                None,
            ),
        ];
        for (root, want) in cases {
            assert_eq!(sessions_path(&root).as_deref(), want, "{root}");
        }
    }
}
