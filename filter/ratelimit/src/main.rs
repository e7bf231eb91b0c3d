//! `policy-ratelimit`: see the library's documentation.

fn main() -> std::process::ExitCode {
    policy_ratelimit::main()
}
