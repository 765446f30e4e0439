//! `--output table|json` for every command whose output is data.

use clap::ValueEnum;
use serde::Serialize;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for people.
    #[default]
    Table,
    /// One JSON document for scripts and CI.
    Json,
}

/// Prints `rows` as an aligned table (with `headers`) or as a JSON array.
#[allow(clippy::print_stdout)]
pub fn print_rows<T: Serialize>(
    format: OutputFormat,
    headers: &[&str],
    rows: &[T],
    cells: impl Fn(&T) -> Vec<String>,
) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(rows)?),
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
            println!("{}", line(headers.iter().map(|h| h.to_string()).collect()));
            for row in table {
                println!("{}", line(row));
            }
        }
    }
    Ok(())
}
