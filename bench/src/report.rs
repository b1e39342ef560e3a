//! One table for every figure a benchmark reports: the figure, its baseline from the same
//! run, and their ratio, so that a reader compares ratios rather than machine-dependent
//! absolute numbers.

/// One line of a benchmark table.
#[derive(Debug, Clone)]
pub struct Row {
    /// What was measured, e.g. `executor --concurrency 50`.
    pub figure: String,
    pub value: f64,
    /// Unit of `value` and of the baseline, e.g. `tasks/s`, `ms`, `MiB`.
    pub unit: &'static str,
    /// What `value` is divided by, measured in the same run; `None` for a plain figure.
    pub baseline: Option<(String, f64)>,
}

impl Row {
    /// A figure shown with its ratio to a baseline measured in the same run.
    pub fn ratio(
        figure: impl Into<String>,
        value: f64,
        unit: &'static str,
        baseline: impl Into<String>,
        baseline_value: f64,
    ) -> Self {
        Row {
            figure: figure.into(),
            value,
            unit,
            baseline: Some((baseline.into(), baseline_value)),
        }
    }

    /// A figure with no baseline (a latency percentile, a memory size).
    pub fn plain(figure: impl Into<String>, value: f64, unit: &'static str) -> Self {
        Row {
            figure: figure.into(),
            value,
            unit,
            baseline: None,
        }
    }
}

/// Formats a value with as many decimals as its size deserves.
fn number(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The table as text, columns aligned; numbers (value, ratio) to the right.
pub fn render(rows: &[Row]) -> String {
    let mut lines: Vec<Vec<String>> = Vec::with_capacity(rows.len());
    for row in rows {
        let value = format!("{} {}", number(row.value), row.unit);
        let (base, ratio) = match &row.baseline {
            Some((name, b)) => (
                format!("{name}: {} {}", number(*b), row.unit),
                if *b > 0.0 {
                    format!("{:.2}", row.value / b)
                } else {
                    "-".to_string()
                },
            ),
            None => ("-".to_string(), "-".to_string()),
        };
        lines.push(vec![row.figure.clone(), value, base, ratio]);
    }
    layout(
        &["figure", "value", "baseline (same run)", "ratio"],
        &lines,
        |c| c == 1 || c == 3,
    )
}

/// A table of plain columns (counts rather than ratios), aligned, with a rule under the
/// header.
pub fn render_columns(header: &[&str], rows: &[Vec<String>]) -> String {
    layout(header, rows, |_| false)
}

/// Header, rule and rows with every column as wide as its widest cell; the columns for
/// which `right` holds are right-aligned.
fn layout(header: &[&str], rows: &[Vec<String>], right: impl Fn(usize) -> bool) -> String {
    let mut lines: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    lines.extend(rows.iter().cloned());
    let columns = header.len();
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            lines
                .iter()
                .map(|l| l.get(c).map_or(0, |cell| cell.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (i, line) in lines.iter().enumerate() {
        let cells: Vec<String> = (0..columns)
            .map(|c| {
                let cell = line.get(c).map_or("", String::as_str);
                if right(c) {
                    format!("{cell:>w$}", w = widths[c])
                } else {
                    format!("{cell:<w$}", w = widths[c])
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
        if i == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            out.push_str(&rule.join("  "));
            out.push('\n');
        }
    }
    out
}

/// Prints the table to stdout.
pub fn print_table(rows: &[Row]) {
    print!("{}", render(rows));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_column_divides_by_the_baseline_and_plain_rows_have_none() {
        let text = render(&[
            Row::ratio("ours", 50.0, "tasks/s", "theirs", 100.0),
            Row::plain("p99", 1.5, "ms"),
        ]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[2].ends_with("0.50"), "{text}");
        assert!(lines[2].contains("theirs: 100 tasks/s"), "{text}");
        assert!(lines[3].ends_with('-'), "{text}");
    }

    #[test]
    fn columns_align_and_short_rows_are_padded() {
        let text = render_columns(
            &["check", "count"],
            &[
                vec!["lost".into(), "0".into()],
                vec!["a longer check".into()],
            ],
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert_eq!(lines[1], "--------------  -----", "{text}");
        assert_eq!(lines[2], "lost            0", "{text}");
        assert_eq!(lines[3], "a longer check", "{text}");
    }
}
