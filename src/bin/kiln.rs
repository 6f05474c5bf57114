//! The `kiln` binary: daemon and CLI. All logic lives in the library.

fn main() -> std::process::ExitCode {
    kiln::cli::main()
}
