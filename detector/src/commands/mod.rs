//! Each subcommand's body, one file each, with its flags; `cli` parses and dispatches.

use std::io::Write;

use anyhow::Context;

use crate::model::inference::Scorer;
use crate::model::model_dir::ModelBundle;

pub mod eval;
pub mod export;
pub mod score;
pub mod serve;
pub mod train;

/// The program's name, in exit messages and logs.
pub const NAME: &str = "dr-detector";

/// The model in `dir`, or the one built into the binary.
pub fn load_model(dir: Option<&std::path::Path>) -> anyhow::Result<Scorer> {
    Scorer::new(ModelBundle::load_or_default(dir)?)
}

/// One line on stdout. A reader that went away (`| head`) is not an error worth a
/// panic, which `println!` would give: the output was simply not wanted.
pub fn print_stdout(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(err).context("writing to stdout")
        }
        _ => Ok(()),
    }
}
