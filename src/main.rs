//! The binary only parses the command line and hands over to the library.

use clap::Parser;

// glibc's allocator serialises frees of memory allocated on another worker thread behind an
// arena lock; under load that lock was the gateway's main source of futex waits. jemalloc's
// thread caches take those frees without a lock.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // Freed memory goes back to the system in the background (after jemalloc's decay time)
    // rather than only when the allocator is next busy, so an idle gateway stays small after
    // a burst such as a login's 19 MiB password hash.
    #[cfg(not(target_env = "msvc"))]
    let _ = tikv_jemalloc_ctl::background_thread::write(true);
    let cli = mcp_oauth_gateway::cli::Cli::parse();
    match mcp_oauth_gateway::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
