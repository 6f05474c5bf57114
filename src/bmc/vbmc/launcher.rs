//! Starts QEMU so that it cannot outlive the vbmc, even when the vbmc dies without cleaning up
//! (SIGKILL, a panic that aborts, the OOM killer).
//!
//! Each QEMU sets `PR_SET_PDEATHSIG(SIGKILL)` between fork and exec. The kernel sends that signal
//! when the *thread* that forked the child exits, not when the process does. Under tokio's
//! multi-thread runtime the forking thread is whichever one runs the task: `spawn_blocking`
//! threads exit after 10 s idle, and a worker that enters `block_in_place` is handed off and may
//! later exit the same way — a VM forked there would be killed while the vbmc is healthy. So every
//! QEMU is forked by one dedicated thread that is never joined and never returns: it ends only
//! when the process ends, which is exactly when the VMs must go.
//!
//! Other mechanisms were weighed: killing a process group or tracking PIDs only works if the vbmc
//! runs its cleanup, which SIGKILL prevents; a subreaper reaps but does not kill; a cgroup needs
//! delegation from the init system. Graceful shutdown (see [`super::Vbmc::shutdown`]) still stops
//! and reaps every VM itself; this is the backstop.

use std::io;
use std::sync::OnceLock;
use std::sync::mpsc;
use tokio::process::{Child, Command};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// A command to fork, the runtime that will reap the child, and where to send the result.
type Request = (Handle, Command, oneshot::Sender<io::Result<Child>>);

fn launcher() -> &'static mpsc::Sender<Request> {
    static LAUNCHER: OnceLock<mpsc::Sender<Request>> = OnceLock::new();
    LAUNCHER.get_or_init(|| {
        let (sender, requests) = mpsc::channel::<Request>();
        // If the thread cannot start, `requests` is dropped with the closure and every spawn
        // reports that instead of starting a QEMU without the guarantee.
        let _ = std::thread::Builder::new()
            .name("vbmc-launcher".into())
            .spawn(move || {
                for (handle, mut command, reply) in requests {
                    // tokio registers the child with the runtime that will reap it.
                    let _runtime = handle.enter();
                    // A caller that went away drops the child here: `kill_on_drop` ends it.
                    let _ = reply.send(command.spawn());
                }
            });
        sender
    })
}

/// Spawns `command` (a QEMU, possibly behind `ip netns exec`, which execs it in the same process)
/// from the launcher thread, SIGKILLed by the kernel if this process dies.
pub async fn spawn(mut command: Command) -> io::Result<Child> {
    let parent = std::process::id();
    // SAFETY: the closure only makes two system calls, which are async-signal-safe, and touches
    // no memory shared with the parent.
    unsafe {
        command.pre_exec(move || die_with_parent(parent));
    }
    let (reply, result) = oneshot::channel();
    let gone = || io::Error::other("the vbmc launcher thread is not running");
    launcher()
        .send((Handle::current(), command, reply))
        .map_err(|_| gone())?;
    result.await.map_err(|_| gone())?
}

/// Runs in the forked child before exec.
fn die_with_parent(parent: u32) -> io::Result<()> {
    // SAFETY: prctl with PR_SET_PDEATHSIG takes one integer argument and changes only this process.
    let set = unsafe {
        nix::libc::prctl(
            nix::libc::PR_SET_PDEATHSIG,
            nix::libc::SIGKILL as nix::libc::c_ulong,
        )
    };
    if set != 0 {
        return Err(io::Error::last_os_error());
    }
    // The parent may have died between fork and prctl; then nothing will signal us.
    if std::os::unix::process::parent_id() != parent {
        return Err(io::Error::from_raw_os_error(nix::libc::ESRCH));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread")]
    async fn child_runs_and_is_reaped() {
        let mut command = Command::new("sh");
        command.args(["-c", "exit 7"]).kill_on_drop(true);
        let mut child = spawn(command).await.unwrap();
        assert_eq!(child.wait().await.unwrap().code(), Some(7));
    }

    /// The hazard the launcher thread exists for: a child forked by a short-lived thread would get
    /// its death signal when that thread exits.
    #[tokio::test(flavor = "multi_thread")]
    async fn the_child_outlives_the_thread_that_asked_for_it() {
        let handle = Handle::current();
        let mut child = std::thread::spawn(move || {
            handle.block_on(async {
                let mut command = Command::new("sleep");
                command.arg("30").kill_on_drop(true);
                spawn(command).await.unwrap()
            })
        })
        .join()
        .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            child.try_wait().unwrap().is_none(),
            "killed with its thread"
        );
        child.kill().await.unwrap();
    }

    #[tokio::test]
    async fn works_from_a_current_thread_runtime_too() {
        let mut command = Command::new("true");
        command.kill_on_drop(true);
        assert!(
            spawn(command)
                .await
                .unwrap()
                .wait()
                .await
                .unwrap()
                .success()
        );
    }
}
