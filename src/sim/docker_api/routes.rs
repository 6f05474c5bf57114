//! Which Docker Engine API call a request is: method and path (with or without the `/v1.xx`
//! prefix) to a [`Route`], a pure function tested on every endpoint the deployer uses.

use axum::http::Method;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    Ping,
    Version,
    Info,
    ListContainers,
    CreateContainer,
    InspectContainer(String),
    StartContainer(String),
    StopContainer(String),
    RemoveContainer(String),
    UploadArchive(String),
    ContainerLogs(String),
    /// `POST /containers/{name}/exec`, `POST /exec/{id}/start`, `GET /exec/{id}/json`: the
    /// deployer's startup probe.
    CreateExec(String),
    StartExec(String),
    InspectExec(String),
    InspectImage(String),
    PullImage,
    LoadImage,
    TagImage(String),
    CreateVolume,
    ListVolumes,
    RemoveVolume(String),
}

/// `/v1.41/containers/json` → `containers/json`; unversioned paths pass through.
fn strip_version(path: &str) -> &str {
    let path = path.trim_start_matches('/');
    match path.split_once('/') {
        Some((first, rest))
            if first.starts_with('v')
                && first.len() > 1
                && first[1..].chars().all(|c| c.is_ascii_digit() || c == '.') =>
        {
            rest
        }
        _ if path.starts_with('v') && path[1..].chars().all(|c| c.is_ascii_digit() || c == '.') => {
            ""
        }
        _ => path,
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(high), Some(low)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((high * 16 + low) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).to_string()
}

pub fn route(method: &Method, path: &str) -> Option<Route> {
    let path = percent_decode(strip_version(path));
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let m = method.clone();
    Some(match (m, segments.as_slice()) {
        (Method::GET | Method::HEAD, ["_ping"]) => Route::Ping,
        (Method::GET, ["version"]) => Route::Version,
        (Method::GET, ["info"]) => Route::Info,
        (Method::GET, ["containers", "json"]) => Route::ListContainers,
        (Method::POST, ["containers", "create"]) => Route::CreateContainer,
        (Method::GET, ["containers", name, "json"]) => Route::InspectContainer(name.to_string()),
        (Method::POST, ["containers", name, "start"]) => Route::StartContainer(name.to_string()),
        (Method::POST, ["containers", name, "stop"]) => Route::StopContainer(name.to_string()),
        (Method::DELETE, ["containers", name]) => Route::RemoveContainer(name.to_string()),
        (Method::PUT, ["containers", name, "archive"]) => Route::UploadArchive(name.to_string()),
        (Method::GET, ["containers", name, "logs"]) => Route::ContainerLogs(name.to_string()),
        (Method::POST, ["containers", name, "exec"]) => Route::CreateExec(name.to_string()),
        (Method::POST, ["exec", id, "start"]) => Route::StartExec(id.to_string()),
        (Method::GET, ["exec", id, "json"]) => Route::InspectExec(id.to_string()),
        (Method::POST, ["images", "create"]) => Route::PullImage,
        (Method::POST, ["images", "load"]) => Route::LoadImage,
        // Image references hold slashes: everything between `images/` and the verb.
        (Method::GET, ["images", reference @ .., "json"]) if !reference.is_empty() => {
            Route::InspectImage(reference.join("/"))
        }
        (Method::POST, ["images", reference @ .., "tag"]) if !reference.is_empty() => {
            Route::TagImage(reference.join("/"))
        }
        (Method::POST, ["volumes", "create"]) => Route::CreateVolume,
        (Method::GET, ["volumes"]) => Route::ListVolumes,
        (Method::DELETE, ["volumes", name]) => Route::RemoveVolume(name.to_string()),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_endpoint_the_deployer_calls() {
        let cases = [
            (Method::GET, "/_ping", Route::Ping),
            (Method::HEAD, "/_ping", Route::Ping),
            (Method::GET, "/v1.41/version", Route::Version),
            (Method::GET, "/version", Route::Version),
            (Method::GET, "/v1.41/info", Route::Info),
            (Method::GET, "/v1.41/containers/json", Route::ListContainers),
            (
                Method::POST,
                "/v1.41/containers/create",
                Route::CreateContainer,
            ),
            (
                Method::GET,
                "/v1.41/containers/mariadb/json",
                Route::InspectContainer("mariadb".into()),
            ),
            (
                Method::POST,
                "/v1.41/containers/mariadb/start",
                Route::StartContainer("mariadb".into()),
            ),
            (
                Method::POST,
                "/v1.41/containers/mariadb/stop",
                Route::StopContainer("mariadb".into()),
            ),
            (
                Method::DELETE,
                "/v1.41/containers/mariadb",
                Route::RemoveContainer("mariadb".into()),
            ),
            (
                Method::PUT,
                "/v1.41/containers/mariadb/archive",
                Route::UploadArchive("mariadb".into()),
            ),
            (
                Method::GET,
                "/v1.41/containers/mariadb/logs",
                Route::ContainerLogs("mariadb".into()),
            ),
            (
                Method::POST,
                "/v1.41/containers/keystone/exec",
                Route::CreateExec("keystone".into()),
            ),
            (
                Method::POST,
                "/v1.41/exec/abc123/start",
                Route::StartExec("abc123".into()),
            ),
            (
                Method::GET,
                "/v1.41/exec/abc123/json",
                Route::InspectExec("abc123".into()),
            ),
            (Method::POST, "/v1.41/images/create", Route::PullImage),
            (Method::POST, "/v1.41/images/load", Route::LoadImage),
            (
                Method::GET,
                "/v1.41/images/kiln.local:5000/kolla/mariadb:zed/json",
                Route::InspectImage("kiln.local:5000/kolla/mariadb:zed".into()),
            ),
            (
                Method::GET,
                "/v1.41/images/kiln.local%3A5000%2Fkolla%2Fmariadb%3Azed/json",
                Route::InspectImage("kiln.local:5000/kolla/mariadb:zed".into()),
            ),
            (
                Method::GET,
                "/v1.41/images/busybox/json",
                Route::InspectImage("busybox".into()),
            ),
            (
                Method::POST,
                "/v1.41/images/kolla/x:1/tag",
                Route::TagImage("kolla/x:1".into()),
            ),
            (Method::POST, "/v1.41/volumes/create", Route::CreateVolume),
            (Method::GET, "/v1.41/volumes", Route::ListVolumes),
            (
                Method::DELETE,
                "/v1.41/volumes/mariadb",
                Route::RemoveVolume("mariadb".into()),
            ),
        ];
        for (method, path, expected) in cases {
            assert_eq!(route(&method, path), Some(expected), "{method} {path}");
        }
    }

    #[test]
    fn unknown_or_wrong_method_is_none() {
        for (method, path) in [
            (Method::POST, "/v1.41/containers/json"),
            (Method::GET, "/v1.41/containers/create"),
            (Method::GET, "/v1.41/images/json"),
            (Method::GET, "/v1.41/images//json"),
            (Method::GET, "/v1.41/swarm"),
            (Method::GET, "/"),
            (Method::GET, "/v1.41"),
            (Method::PUT, "/v1.41/volumes/x"),
            (Method::GET, "/v1.41/containers/x/exec"),
            (Method::POST, "/v1.41/exec/abc123/json"),
        ] {
            assert_eq!(route(&method, path), None, "{method} {path}");
        }
    }

    #[test]
    fn percent_decoding_keeps_broken_escapes() {
        assert_eq!(percent_decode("a%2Fb"), "a/b");
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("a%zz"), "a%zz");
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("%é1"), "%é1");
    }
}
