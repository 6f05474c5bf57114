//! A `kiln lab` rack (QEMU VMs or the simulator) owned by a test: its namespace name and
//! directory, `kiln` run inside it with the lab's data directory, and `kiln lab down` on drop so
//! a failing test leaves nothing running.

use std::path::PathBuf;
use std::process::Command;

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

pub struct RackLab {
    /// The lab's name, which is also its network namespace's.
    pub name: String,
    /// `PARENT/lab`, given to `kiln lab up --dir`.
    pub dir: PathBuf,
    /// Holds the lab directory and whatever else the test keeps beside it.
    pub parent: tempfile::TempDir,
}

impl RackLab {
    /// A temp dir named `temp_prefix…`, and the lab name `name_prefix` + this process's ID.
    pub fn new(temp_prefix: &str, name_prefix: &str) -> RackLab {
        let parent = tempfile::Builder::new()
            .prefix(temp_prefix)
            .tempdir()
            .unwrap();
        RackLab {
            name: format!("{name_prefix}{}", std::process::id()),
            dir: parent.path().join("lab"),
            parent,
        }
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// `kiln --data-dir LAB/data ARGS…` inside the lab's namespace.
    pub fn kiln(&self, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.name, KILN, "--data-dir"])
            .arg(self.dir.join("data"))
            .args(args);
        command
    }
}

impl Drop for RackLab {
    fn drop(&mut self) {
        let _ = Command::new(KILN)
            .args(["lab", "down", "--name", &self.name, "--dir"])
            .arg(&self.dir)
            .output();
    }
}
