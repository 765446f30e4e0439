//! `--output table|json` for every command whose output is data, and the one way every
//! command writes to stdout: [`out!`](crate::out) / [`outln!`](crate::outln) through a locked
//! stdout. A reader that stops early (`cloudctl status --output json | head -1`) is a normal
//! end, not a panic: the write returns [`StdoutClosed`], the command stops there, and `main`
//! exits 0 without a message, as `cat`, `grep` or `git log` do.

use std::io::{ErrorKind, Write};

use clap::ValueEnum;
use serde::Serialize;

/// Writes `format!`-style text to stdout; `Err(StdoutClosed)` when the reader has gone.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!($($arg)*))
    };
}

/// [`out!`](crate::out) with a newline.
#[macro_export]
macro_rules! outln {
    () => {
        $crate::output::write_stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// The reader of stdout closed it (EPIPE): the command's output is no longer wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stdout was closed by its reader")
    }
}

impl std::error::Error for StdoutClosed {}

/// Writes and flushes through the locked stdout. Rust ignores SIGPIPE, so a closed pipe comes
/// back as an `EPIPE` error, which becomes [`StdoutClosed`]; other errors keep their cause.
pub fn write_stdout(args: std::fmt::Arguments<'_>) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        Err(e) => Err(anyhow::Error::new(e).context("cannot write to stdout")),
    }
}

/// For output followed by a verdict (`env validate` findings, refused promotions): a closed
/// stdout ends the output, not the verdict, so the exit status still says what was found.
pub fn unless_closed(printed: anyhow::Result<()>) -> anyhow::Result<()> {
    match printed {
        Err(err) if is_stdout_closed(&err) => Ok(()),
        other => other,
    }
}

/// Whether `err` (anywhere in its chain) is [`StdoutClosed`].
pub fn is_stdout_closed(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| cause.is::<StdoutClosed>())
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for people.
    #[default]
    Table,
    /// One JSON document for scripts and CI.
    Json,
}

/// Prints `rows` as an aligned table (with `headers`) or as a JSON array.
pub fn print_rows<T: Serialize>(
    format: OutputFormat,
    headers: &[&str],
    rows: &[T],
    cells: impl Fn(&T) -> Vec<String>,
) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => crate::outln!("{}", serde_json::to_string_pretty(rows)?)?,
        OutputFormat::Table => {
            let table: Vec<Vec<String>> = rows.iter().map(&cells).collect();
            let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
            for row in &table {
                for (i, cell) in row.iter().enumerate() {
                    if let Some(w) = widths.get_mut(i) {
                        *w = (*w).max(cell.chars().count());
                    }
                }
            }
            let line = |cells: Vec<String>| {
                cells
                    .iter()
                    .enumerate()
                    .map(|(i, c)| format!("{c:<w$}", w = widths.get(i).copied().unwrap_or(0)))
                    .collect::<Vec<_>>()
                    .join("  ")
                    .trim_end()
                    .to_string()
            };
            let mut text = line(headers.iter().map(|h| h.to_string()).collect());
            text.push('\n');
            for row in table {
                text.push_str(&line(row));
                text.push('\n');
            }
            crate::out!("{text}")?;
        }
    }
    Ok(())
}
