//! Writes Lodger's CRDs as YAML.
//!
//! `crdgen DIR...` writes one file per CRD into each DIR (used for `crds/` and the chart's
//! `crds/`); without arguments it prints them all to stdout as one multi-document stream.

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let dirs: Vec<String> = std::env::args().skip(1).collect();
    let mut all = String::new();
    for (file, crd) in lodger_api::crds() {
        let text = match lodger_api::crd_yaml(&crd) {
            Ok(text) => text,
            Err(err) => {
                eprintln!("crdgen: failed to serialize {file}: {err}");
                return ExitCode::FAILURE;
            }
        };
        if dirs.is_empty() {
            all.push_str(&text);
        }
        for dir in &dirs {
            let path = Path::new(dir).join(file);
            if let Err(err) = std::fs::write(&path, &text) {
                eprintln!("crdgen: failed to write {}: {err}", path.display());
                return ExitCode::FAILURE;
            }
        }
    }
    if dirs.is_empty() {
        print!("{all}");
    }
    ExitCode::SUCCESS
}
