//! Free disk space where a Docker Engine keeps images and containers. The API does not report it,
//! so a short-lived, unlabelled container from an image already on the engine runs `df` over the
//! engine's `DockerRootDir`, bind-mounted read-only, and is removed. `None` when no candidate
//! image is present or none of them has `df` (a fresh host before `kiln services pull`).

use super::DockerEngine;
use crate::deployer::engine::{DiskFree, Engine, EngineError};
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{CreateContainerOptions, RemoveContainerOptions};
use std::sync::atomic::{AtomicU32, Ordering};

/// Where the probe sees the engine's root directory.
const MOUNT: &str = "/kiln-docker-root";
/// Images tried before giving up.
const MAX_TRIES: usize = 3;

static NEXT_PROBE: AtomicU32 = AtomicU32::new(0);

impl DockerEngine {
    pub(super) async fn probe_free_disk(
        &self,
        images: &[String],
    ) -> Result<Option<DiskFree>, EngineError> {
        let info = self
            .docker
            .info()
            .await
            .map_err(|e| self.unreachable_or("info", "engine", e))?;
        let Some(root) = info.docker_root_dir.filter(|r| r.starts_with('/')) else {
            return Ok(None);
        };
        let mut tried = 0;
        for image in images {
            if tried == MAX_TRIES {
                break;
            }
            if self.image_present(image).await? {
                tried += 1;
                if let Some(available_bytes) = self.df_with(image, &root).await? {
                    return Ok(Some(DiskFree {
                        root,
                        available_bytes,
                    }));
                }
            }
        }
        Ok(None)
    }

    async fn image_present(&self, image: &str) -> Result<bool, EngineError> {
        Ok(self.image_id(image).await?.is_some())
    }

    /// Runs `df -Pk` in a throwaway container of `image`; `None` when it produced no figure.
    async fn df_with(&self, image: &str, root: &str) -> Result<Option<u64>, EngineError> {
        let name = format!(
            "kiln-disk-probe-{}-{}",
            std::process::id(),
            NEXT_PROBE.fetch_add(1, Ordering::Relaxed)
        );
        let body = ContainerCreateBody {
            image: Some(image.to_string()),
            entrypoint: Some(vec!["df".into()]),
            cmd: Some(vec!["-Pk".into(), MOUNT.into()]),
            user: Some("0".into()),
            host_config: Some(HostConfig {
                binds: Some(vec![format!("{root}:{MOUNT}:ro")]),
                network_mode: Some("none".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptions {
            name: Some(name.clone()),
            ..Default::default()
        };
        self.docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| self.unreachable_or("create", &name, e))?;
        let outcome = async {
            // An image without `df` fails to start: not an engine problem, just no figure.
            if self.start(&name).await.is_err() {
                return Ok(None);
            }
            let code = self.wait(&name).await?;
            let lines = self.logs_tail(&name, 10).await?;
            Ok((code == 0).then(|| parse_df_available(&lines)).flatten())
        }
        .await;
        let options = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        let _ = self.docker.remove_container(&name, Some(options)).await;
        outcome
    }
}

/// Available bytes from `df -Pk PATH` output (POSIX format: a header, then one line whose fourth
/// field is the available 1024-byte blocks).
pub fn parse_df_available(lines: &[String]) -> Option<u64> {
    let mut lines = lines.iter().map(|l| l.trim()).filter(|l| !l.is_empty());
    let header = lines.next()?;
    if !header.starts_with("Filesystem") {
        return None;
    }
    let fields: Vec<&str> = lines.next()?.split_whitespace().collect();
    // A long device name alone on its line is not POSIX output; the number must be there.
    let blocks: u64 = fields.get(3)?.parse().ok()?;
    blocks.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::parse_df_available;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_string).collect()
    }

    #[test]
    fn df_output() {
        let gnu = "Filesystem     1024-blocks     Used Available Capacity Mounted on\n\
                   /dev/vda        264091588 50123456 46123456      53% /kiln-docker-root\n";
        assert_eq!(parse_df_available(&lines(gnu)), Some(46_123_456 * 1024));
        let busybox = "Filesystem           1024-blocks    Used Available Capacity Mounted on\n\
                       overlay                 1000       10       990   1% /kiln-docker-root\n";
        assert_eq!(parse_df_available(&lines(busybox)), Some(990 * 1024));
        for bad in [
            "",
            "df: /kiln-docker-root: No such file or directory\n",
            "Filesystem 1024-blocks Used Available Capacity Mounted on\n",
            "Filesystem 1024-blocks Used Available Capacity Mounted on\n/dev/x 1 2 lots 5% /\n",
        ] {
            assert_eq!(parse_df_available(&lines(bad)), None, "{bad:?}");
        }
    }
}
