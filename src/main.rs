//! The `eds` binary: everything happens in [`eds::cli::run`].

fn main() -> std::process::ExitCode {
    eds::cli::run(std::env::args_os())
}
