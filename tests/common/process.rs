//! Process helpers shared by the test kit and the benchmarks that reuse it: a child stopped on
//! drop, and a finished command's exit code and text.

use std::process::Child;
use std::time::Duration;

/// (exit code, stdout, stderr) of a finished command, as the CLI tests compare them.
pub fn exit_and_text(out: &std::process::Output) -> (i32, String, String) {
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A child process (QEMU, a daemon, a peer) stopped on drop: SIGTERM first so it can clean up
/// (`kiln vbmc` powers its VMs off), SIGKILL if it has not exited within 5 s.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..50 {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
