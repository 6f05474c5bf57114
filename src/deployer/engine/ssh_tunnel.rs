//! Docker Engine over SSH, the way the docker CLI does it: the system `ssh` client runs
//! `docker system dial-stdio` on the host, and Kiln serves each such session to bollard on a
//! private unix socket. Using the system client keeps the operator's `~/.ssh/config` (jump hosts,
//! agents, ciphers) in force, as Kolla-ansible's SSH connection does.
//!
//! Host keys: trust on first use, recorded in `<data dir>/ssh/known_hosts` (the operator's own
//! `~/.ssh/known_hosts` is consulted too); a key that changes afterwards is refused.
//!
//! bollard opens a connection per request (it keeps none idle), so one SSH connection per host is
//! multiplexed (`ControlMaster`) and each request costs a channel, not a handshake. sshd refuses
//! more than `MaxSessions` (default 10) channels on one connection, so at most
//! [`MAX_SESSIONS`] requests per host are in flight; the rest wait their turn.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::AsyncReadExt;
use tokio::net::UnixListener;
use tokio::task::JoinHandle;

/// How long the multiplexing master outlives its last session (seconds).
const CONTROL_PERSIST_S: u32 = 15;
const CONNECT_TIMEOUT_S: u32 = 10;
/// Below sshd's default `MaxSessions` of 10 (the master's own session counts).
pub const MAX_SESSIONS: usize = 8;

static NEXT_TUNNEL: AtomicU32 = AtomicU32::new(0);

/// `ssh://[user@]host[:port]`, split for the ssh command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SshTarget {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
}

/// Parses `ssh://[user@]host[:port]` (IPv6 hosts in brackets).
pub fn parse_target(url: &str) -> Result<SshTarget, String> {
    let rest = url
        .strip_prefix("ssh://")
        .ok_or_else(|| format!("'{url}' is not an ssh:// URL"))?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') {
        return Err(format!("'{url}': an ssh URL names a host, not a path"));
    }
    let (user, host_port) = match rest.rsplit_once('@') {
        Some((user, host_port)) if !user.is_empty() => (Some(user.to_string()), host_port),
        Some(_) => return Err(format!("'{url}': empty user before '@'")),
        None => (None, rest),
    };
    let (host, port) = if let Some(bracketed) = host_port.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or_else(|| format!("'{url}': unclosed '['"))?;
        let port =
            match after {
                "" => None,
                _ => Some(after.strip_prefix(':').ok_or_else(|| {
                    format!("'{url}': expected ':port' after the bracketed address")
                })?),
            };
        (host, port)
    } else {
        match host_port.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        }
    };
    if host.is_empty() {
        return Err(format!("'{url}' names no host"));
    }
    let port = port
        .map(|p| {
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("'{url}': port '{p}' is not a number from 1 to 65535"))
        })
        .transpose()?;
    Ok(SshTarget {
        user,
        host: host.to_string(),
        port,
    })
}

/// The `ssh` arguments that open one `docker system dial-stdio` session.
pub fn ssh_args(
    target: &SshTarget,
    key: Option<&Path>,
    known_hosts: &Path,
    control_path: &Path,
) -> Vec<String> {
    let mut args: Vec<String> = [
        "BatchMode=yes".to_string(),
        format!("ConnectTimeout={CONNECT_TIMEOUT_S}"),
        "ServerAliveInterval=15".into(),
        "StrictHostKeyChecking=accept-new".into(),
        format!(
            "UserKnownHostsFile={} ~/.ssh/known_hosts",
            known_hosts.display()
        ),
        "ControlMaster=auto".into(),
        format!("ControlPath={}", control_path.display()),
        format!("ControlPersist={CONTROL_PERSIST_S}"),
    ]
    .into_iter()
    .flat_map(|option| ["-o".to_string(), option])
    .collect();
    if let Some(port) = target.port {
        args.extend(["-p".into(), port.to_string()]);
    }
    if let Some(key) = key {
        args.extend([
            "-i".into(),
            key.display().to_string(),
            "-o".into(),
            "IdentitiesOnly=yes".into(),
        ]);
    }
    if let Some(user) = &target.user {
        args.extend(["-l".into(), user.clone()]);
    }
    args.extend(
        ["--", &target.host, "docker", "system", "dial-stdio"]
            .into_iter()
            .map(str::to_string),
    );
    args
}

/// A private unix socket whose every connection is one SSH `dial-stdio` session to the host.
/// Dropping it stops accepting and removes the socket's directory.
pub struct SshTunnel {
    dir: PathBuf,
    /// `ssh -O exit` for the multiplexing master, run on drop.
    stop_master: Vec<String>,
    socket: PathBuf,
    last_error: Arc<Mutex<Option<String>>>,
    accept: JoinHandle<()>,
}

impl SshTunnel {
    /// Must be called inside a tokio runtime. Nothing connects until bollard's first request.
    pub fn open(url: &str, key: Option<&Path>, data_dir: &Path) -> Result<SshTunnel, String> {
        let target = parse_target(url)?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "the SSH tunnel needs a tokio runtime".to_string())?;
        let ssh_dir = data_dir.join("ssh");
        std::fs::create_dir_all(&ssh_dir)
            .map_err(|e| format!("cannot create {}: {e}", ssh_dir.display()))?;
        let dir = private_dir()?;
        let socket = dir.join("docker.sock");
        let args = ssh_args(
            &target,
            key,
            &ssh_dir.join("known_hosts"),
            &dir.join("master"),
        );
        let listener = {
            let _entered = runtime.enter();
            UnixListener::bind(&socket)
        }
        .map_err(|e| format!("cannot listen on {}: {e}", socket.display()))?;
        let last_error = Arc::new(Mutex::new(None));
        let accept = runtime.spawn(serve(listener, args, last_error.clone()));
        let stop_master = vec![
            "-O".into(),
            "exit".into(),
            "-o".into(),
            format!("ControlPath={}", dir.join("master").display()),
            "--".into(),
            target.host.clone(),
        ];
        Ok(SshTunnel {
            dir,
            stop_master,
            socket,
            last_error,
            accept,
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// What `ssh` last printed when a session failed (host key refused, permission denied, no
    /// docker on the host), for error messages.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }
}

impl Drop for SshTunnel {
    fn drop(&mut self) {
        self.accept.abort();
        if self.dir.join("master").exists() {
            let _ = std::process::Command::new("ssh")
                .args(&self.stop_master)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn private_dir() -> Result<PathBuf, String> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = std::env::temp_dir().join(format!(
        "kiln-ssh-{}-{}",
        std::process::id(),
        NEXT_TUNNEL.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

async fn serve(listener: UnixListener, args: Vec<String>, last_error: Arc<Mutex<Option<String>>>) {
    let sessions = Arc::new(tokio::sync::Semaphore::new(MAX_SESSIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                tracing::warn!(%err, "ssh tunnel: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let args = args.clone();
        let last_error = last_error.clone();
        let sessions = sessions.clone();
        tokio::spawn(async move {
            let Ok(_permit) = sessions.acquire_owned().await else {
                return;
            };
            relay(stream, &args, &last_error).await;
        });
    }
}

/// Pipes one bollard connection through one `ssh … docker system dial-stdio`. A failed session's
/// reason is recorded before bollard sees its connection close, so the error it reports can say
/// why.
async fn relay(
    stream: tokio::net::UnixStream,
    args: &[String],
    last_error: &Mutex<Option<String>>,
) {
    let (mut from_client, mut to_client) = stream.into_split();
    let outcome = session(&mut from_client, &mut to_client, args).await;
    if let Err(message) = &outcome {
        tracing::warn!(%message, "ssh session to a Docker Engine failed");
    }
    if let Ok(mut slot) = last_error.lock() {
        *slot = outcome.err();
    }
    let _ = tokio::io::AsyncWriteExt::shutdown(&mut to_client).await;
}

async fn session(
    from_client: &mut tokio::net::unix::OwnedReadHalf,
    to_client: &mut tokio::net::unix::OwnedWriteHalf,
    args: &[String],
) -> Result<(), String> {
    let mut child = tokio::process::Command::new("ssh")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run ssh: {e}"))?;
    let (Some(mut stdin), Some(mut stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err("ssh started without its pipes".into());
    };
    let upstream = async {
        let _ = tokio::io::copy(from_client, &mut stdin).await;
        drop(stdin);
    };
    let downstream = async {
        let _ = tokio::io::copy(&mut stdout, to_client).await;
    };
    let mut complaint = String::new();
    let diagnostics = async {
        let _ = stderr.read_to_string(&mut complaint).await;
    };
    // The client's half may stay open after ssh died; the session ends with ssh's output.
    tokio::select! {
        _ = upstream => {}
        _ = async { tokio::join!(downstream, diagnostics) } => {}
    }
    let status = child.wait().await.map_err(|e| format!("ssh: {e}"))?;
    // dial-stdio ends with status 0 when the client hangs up; anything else is ssh's (255) or
    // the remote docker's failure, explained on stderr.
    if status.success() {
        return Ok(());
    }
    let complaint = complaint.trim();
    Err(if complaint.is_empty() {
        format!("ssh exited with {status}")
    } else {
        format!("ssh: {}", complaint.lines().last().unwrap_or(complaint))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(user: Option<&str>, host: &str, port: Option<u16>) -> SshTarget {
        SshTarget {
            user: user.map(str::to_string),
            host: host.to_string(),
            port,
        }
    }

    #[test]
    fn targets() {
        assert_eq!(
            parse_target("ssh://root@10.0.0.4:2222"),
            Ok(target(Some("root"), "10.0.0.4", Some(2222)))
        );
        assert_eq!(
            parse_target("ssh://node1.example"),
            Ok(target(None, "node1.example", None))
        );
        assert_eq!(
            parse_target("ssh://ops@[fd00::4]:22/"),
            Ok(target(Some("ops"), "fd00::4", Some(22)))
        );
        assert_eq!(
            parse_target("ssh://[fd00::4]"),
            Ok(target(None, "fd00::4", None))
        );
        for bad in [
            "tcp://a:1",
            "ssh://",
            "ssh://root@",
            "ssh://@host",
            "ssh://host:0",
            "ssh://host:99999",
            "ssh://host:x",
            "ssh://host/path",
            "ssh://[fd00::4",
            "ssh://[fd00::4]22",
        ] {
            assert!(parse_target(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn command_line() {
        let args = ssh_args(
            &target(Some("root"), "10.0.0.4", Some(2222)),
            Some(Path::new("/keys/id")),
            Path::new("/data/ssh/known_hosts"),
            Path::new("/tmp/t/master"),
        );
        let line = args.join(" ");
        assert!(line.contains("-o BatchMode=yes"), "{line}");
        assert!(
            line.contains("-o StrictHostKeyChecking=accept-new"),
            "{line}"
        );
        assert!(
            line.contains("-o UserKnownHostsFile=/data/ssh/known_hosts ~/.ssh/known_hosts"),
            "{line}"
        );
        assert!(line.contains("-o ControlPath=/tmp/t/master"), "{line}");
        assert!(
            line.contains("-p 2222 -i /keys/id -o IdentitiesOnly=yes -l root"),
            "{line}"
        );
        assert!(
            line.ends_with("-- 10.0.0.4 docker system dial-stdio"),
            "{line}"
        );
        let bare = ssh_args(
            &target(None, "h", None),
            None,
            Path::new("/k"),
            Path::new("/c"),
        )
        .join(" ");
        assert!(!bare.contains("-p ") && !bare.contains("-i ") && !bare.contains("-l "));
    }
}
