//! `rudder validate -f FILE|DIR|-`: strict validation of config files, one line per problem.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config::Severity;
use crate::config::source::file::{DEFAULT_NAMESPACE, config_files};
use crate::config::validate::check_file;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Files or directories to validate; `-` reads standard input.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
    /// Report unknown fields as warnings instead of errors (what the loaders do).
    #[arg(long)]
    lenient: bool,
}

/// Exit codes: 0 all valid, 1 some document invalid, 2 some input unreadable.
pub fn run(args: Args) -> ExitCode {
    let mut inputs: Vec<(String, Result<Vec<u8>, String>)> = Vec::new();
    for f in &args.files {
        if f.as_os_str() == "-" {
            let mut buf = Vec::new();
            let res = std::io::stdin()
                .read_to_end(&mut buf)
                .map(|_| buf)
                .map_err(|e| e.to_string());
            inputs.push(("<stdin>".into(), res));
        } else if f.is_dir() {
            for file in config_files(f) {
                inputs.push((file.display().to_string(), read(&file)));
            }
        } else {
            inputs.push((f.display().to_string(), read(f)));
        }
    }
    let (mut docs, mut invalid, mut skipped, mut unreadable) = (0, 0, 0, 0);
    for (origin, text) in inputs {
        let text = match text {
            Ok(t) => t,
            Err(e) => {
                eprintln!("{origin}: cannot read: {e}");
                unreadable += 1;
                continue;
            }
        };
        for checked in check_file(&origin, &text, DEFAULT_NAMESPACE, !args.lenient) {
            if let Some(kind) = &checked.skipped {
                println!("{origin}: skipped {kind}: not a kind rudder reads");
                skipped += 1;
                continue;
            }
            docs += 1;
            if !checked.is_valid() {
                invalid += 1;
            }
            for p in &checked.problems {
                let level = if p.severity == Severity::Error {
                    "error"
                } else {
                    "warning"
                };
                println!("{level}: {p}");
            }
        }
    }
    println!(
        "{docs} documents: {} valid, {invalid} invalid, {skipped} skipped",
        docs - invalid
    );
    if unreadable > 0 {
        ExitCode::from(2)
    } else if invalid > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| e.to_string())
}
