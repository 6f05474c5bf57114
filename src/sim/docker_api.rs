//! TEMPORARY compile stub: replaced by the helper's simulated Docker Engine (branch sim-docker).
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
#[derive(Clone, Debug, Default)]
pub struct EngineTiming {
    pub pull: Duration,
    pub health_delay: Duration,
}
pub struct SimDocker;
impl SimDocker {
    pub fn new(_h: &str, _t: EngineTiming) -> Arc<SimDocker> {
        Arc::new(SimDocker)
    }
}
#[derive(Clone, Debug)]
pub struct TlsIdentity {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
}
#[derive(Debug, thiserror::Error)]
#[error("stub")]
pub struct SimDockerError;
pub async fn serve_tls(
    _l: tokio::net::TcpListener,
    _e: Arc<SimDocker>,
    _t: TlsIdentity,
    s: CancellationToken,
) -> Result<(), SimDockerError> {
    s.cancelled().await;
    Ok(())
}
pub async fn serve_plain(
    _l: tokio::net::TcpListener,
    _e: Arc<SimDocker>,
    s: CancellationToken,
) -> Result<(), SimDockerError> {
    s.cancelled().await;
    Ok(())
}
