//! `kiln lab status`: what of the lab exists and runs, asked from inside its namespace — the
//! vbmc's Redfish service for each VM's power, the daemon's API for each node's state.

use super::plan::{API_LISTEN, BMC_USERNAME, REDFISH_LISTEN};
use serde::Serialize;
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

/// One detached process of the lab, from its pid file.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ProcessStatus {
    pub pid: Option<u32>,
    pub alive: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct VmStatus {
    pub name: String,
    pub mac: String,
    pub address: String,
    pub boot_mode: &'static str,
    /// As the vbmc reports it (`On`/`Off`); none when the vbmc does not answer.
    pub power: Option<String>,
    /// The node's provision state in the lab's daemon; none before enrollment or without daemon.
    pub provision_state: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub name: String,
    pub dir: PathBuf,
    /// The lab directory holds a lab (its `lab.json`).
    pub exists: bool,
    pub namespace: bool,
    pub daemon: ProcessStatus,
    pub vbmc: ProcessStatus,
    pub vms: Vec<VmStatus>,
    /// Why the vbmc or the daemon could not be asked, if they could not.
    pub vbmc_error: Option<String>,
    pub daemon_error: Option<String>,
}

impl Status {
    /// Everything that `kiln lab up` starts is there and running.
    pub fn healthy(&self) -> bool {
        self.exists && self.namespace && self.daemon.alive && self.vbmc.alive
    }
}

/// What the namespace's services said: each system's power, each node's provision state.
pub struct Answers {
    pub power: Result<Vec<(String, String)>, String>,
    pub nodes: Result<Vec<(String, String)>, String>,
}

/// Asks the vbmc and the daemon from a thread that has entered the lab's namespace: every socket
/// it opens lives there, so `127.0.0.1` is the lab's loopback, not the host's.
pub fn ask(namespace: &str, bmc_password: Option<String>, api_token: Option<String>) -> Answers {
    let asked = super::host::in_namespace(namespace, move || query(bmc_password, api_token));
    match asked {
        Ok(answers) => answers,
        Err(reason) => Answers {
            power: Err(reason.clone()),
            nodes: Err(reason),
        },
    }
}

async fn query(bmc_password: Option<String>, api_token: Option<String>) -> Answers {
    let http = match reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
    {
        Ok(http) => http,
        Err(e) => {
            let reason = format!("cannot build an HTTP client: {e}");
            return Answers {
                power: Err(reason.clone()),
                nodes: Err(reason),
            };
        }
    };
    let power = match bmc_password {
        Some(password) => power_states(&http, &password).await,
        None => Err("no BMC password in the lab directory".into()),
    };
    let nodes = match api_token {
        Some(token) => node_states(&http, &token).await,
        None => Err("the daemon has written no API token yet".into()),
    };
    Answers { power, nodes }
}

async fn get_json(request: reqwest::RequestBuilder) -> Result<Value, String> {
    let response = request.send().await.map_err(|e| error_chain(&e))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("HTTP {status}"));
    }
    response.json().await.map_err(|e| error_chain(&e))
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Every system the vbmc serves, with its `PowerState`.
async fn power_states(
    http: &reqwest::Client,
    password: &str,
) -> Result<Vec<(String, String)>, String> {
    let base = format!("http://{REDFISH_LISTEN}");
    let get = |path: &str| {
        http.get(format!("{base}{path}"))
            .basic_auth(BMC_USERNAME, Some(password))
    };
    let systems = get_json(get("/redfish/v1/Systems")).await?;
    let mut states = Vec::new();
    for member in systems["Members"].as_array().into_iter().flatten() {
        let Some(path) = member["@odata.id"].as_str() else {
            continue;
        };
        let system = get_json(get(path)).await?;
        states.push((
            system["Id"].as_str().unwrap_or(path).to_string(),
            system["PowerState"]
                .as_str()
                .unwrap_or("unknown")
                .to_string(),
        ));
    }
    Ok(states)
}

/// Every node the daemon knows, with its provision state.
async fn node_states(http: &reqwest::Client, token: &str) -> Result<Vec<(String, String)>, String> {
    let nodes = get_json(
        http.get(format!("http://{API_LISTEN}/v1/nodes"))
            .bearer_auth(token),
    )
    .await?;
    Ok(nodes
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|node| {
            Some((
                node["spec"]["name"].as_str()?.to_string(),
                node["provision_state"].as_str()?.to_string(),
            ))
        })
        .collect())
}
