//! The Kiln CLI as the deployer tests run it: inside a Docker lab's namespace, with one
//! directory holding `hosts.yaml`, `globals.yaml`, `passwords.yaml` and the data directory.

use super::docker_lab::DockerLab;
use std::path::Path;
use std::time::Instant;

pub struct ServicesCli<'a> {
    pub lab: &'a DockerLab,
    pub dir: &'a Path,
    /// `--catalog DIR`; `None`: the built-in catalog.
    pub catalog: Option<&'a str>,
}

impl ServicesCli<'_> {
    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// `kiln --data-dir DIR/data ARGS…` in the lab's namespace: (exit code, stdout, stderr).
    pub fn kiln(&self, args: &[&str]) -> (i32, String, String) {
        let data = self.path("data");
        let mut full = vec![env!("CARGO_BIN_EXE_kiln"), "--data-dir", &data];
        full.extend_from_slice(args);
        super::exit_and_text(&self.lab.exec_in_ns(&full))
    }

    /// `kiln services COMMAND` with the directory's hosts, globals and passwords, then `extra`;
    /// logs the exit, the time taken and the output.
    pub fn services(&self, command: &str, extra: &[&str]) -> (i32, String, String) {
        let hosts = self.path("hosts.yaml");
        let globals = self.path("globals.yaml");
        let passwords = self.path("passwords.yaml");
        let mut args = vec![
            "services",
            command,
            "-i",
            &hosts,
            "--globals",
            &globals,
            "--passwords",
            &passwords,
        ];
        if let Some(catalog) = self.catalog {
            args.extend(["--catalog", catalog]);
        }
        args.extend_from_slice(extra);
        let started = Instant::now();
        let result = self.kiln(&args);
        eprintln!(
            "kiln services {command} {extra:?}: exit {} in {:.2} s\n{}{}",
            result.0,
            started.elapsed().as_secs_f64(),
            result.1,
            result.2
        );
        result
    }
}
