//! The agent's HTTP client for Kiln's agent API: one method per call of the protocol.

use super::protocol::{
    CommandResult, Heartbeat, HeartbeatReply, Lookup, LookupReply, PREFIX, ProgressReport,
};
use crate::model::Secret;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("Kiln refused the agent token (401): this deploy attempt is over")]
    Unauthorized,
    #[error("Kiln answered {status} to {call}: {body}")]
    Status {
        call: &'static str,
        status: u16,
        body: String,
    },
    #[error("cannot reach Kiln for {call}: {source}")]
    Transport {
        call: &'static str,
        #[source]
        source: reqwest::Error,
    },
}

pub struct AgentClient {
    http: reqwest::Client,
    base: String,
    token: Secret,
}

impl AgentClient {
    /// `api` is the `kiln.api=` URL (the boot HTTP server).
    pub fn new(api: &url::Url, node: Uuid, token: Secret) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|source| ClientError::Transport {
                call: "client setup",
                source,
            })?;
        Ok(Self {
            http,
            base: format!("{}{PREFIX}/{node}", api.as_str().trim_end_matches('/')),
            token,
        })
    }

    async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        call: &'static str,
        body: &B,
    ) -> Result<R, ClientError> {
        let transport = |source| ClientError::Transport { call, source };
        let response = self
            .http
            .post(format!("{}/{call}", self.base))
            .bearer_auth(self.token.expose())
            .json(body)
            .send()
            .await
            .map_err(transport)?;
        let status = response.status();
        if status == reqwest::StatusCode::UNAUTHORIZED {
            return Err(ClientError::Unauthorized);
        }
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(ClientError::Status {
                call,
                status: status.as_u16(),
                body: body.chars().take(300).collect(),
            });
        }
        response.json().await.map_err(transport)
    }

    pub async fn lookup(&self, body: &Lookup) -> Result<LookupReply, ClientError> {
        self.post("lookup", body).await
    }

    pub async fn heartbeat(&self, body: &Heartbeat) -> Result<HeartbeatReply, ClientError> {
        self.post("heartbeat", body).await
    }

    pub async fn inventory(&self, body: &impl Serialize) -> Result<(), ClientError> {
        self.post::<_, serde_json::Value>("inventory", body)
            .await
            .map(drop)
    }

    pub async fn progress(&self, body: &ProgressReport) -> Result<(), ClientError> {
        self.post::<_, serde_json::Value>("progress", body)
            .await
            .map(drop)
    }

    pub async fn result(&self, body: &CommandResult) -> Result<(), ClientError> {
        self.post::<_, serde_json::Value>("result", body)
            .await
            .map(drop)
    }
}
