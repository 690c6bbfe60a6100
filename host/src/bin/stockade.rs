//! The `stockade` command; see [`stockade::cli`].

fn main() -> std::process::ExitCode {
    stockade::cli::main()
}
