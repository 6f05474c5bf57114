//! The `kiln-agent` binary that runs in the deploy ramdisk (filled in by the provisioning issue).

fn main() -> std::process::ExitCode {
    eprintln!(
        "kiln-agent {}: the deploy agent is not implemented yet",
        env!("CARGO_PKG_VERSION")
    );
    std::process::ExitCode::FAILURE
}
