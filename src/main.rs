//! The `eds` binary: everything happens in [`eds::cli::run`].

/// mimalloc rather than the system allocator: the drain builds and drops millions of small row
/// values, and glibc's malloc and free took about 40 % of its CPU (see the README's figures).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    eds::cli::run(std::env::args_os())
}
