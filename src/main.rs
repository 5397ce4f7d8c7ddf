//! The `rudder` binary; all the work is in `rudder::cli`.

fn main() -> std::process::ExitCode {
    rudder::cli::main()
}
