//! Arrival traces: when each task of a simulation arrives.
//!
//! A trace is a CSV file. Each row is one of:
//! - `T`: one task at `T` seconds;
//! - `T,COUNT`: `COUNT` tasks within the second starting at `T` (per-second counts);
//! - `START,END,COUNT`: `COUNT` tasks between `START` and `END` seconds.
//!
//! Forms may be mixed. Within a second or span the tasks are placed at random (seeded): a
//! Poisson process given its count. Times are seconds on any clock (Unix time works): the
//! simulation starts at the earliest row. Blank lines and `#` comments are skipped, and so is
//! a first row that is not numbers (a header).

use super::rng::Rng;

/// Microseconds in a second: the simulation's clock runs in microseconds.
pub const US: f64 = 1_000_000.0;

/// A malformed trace row.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct TraceError {
    pub line: usize,
    pub message: String,
}

/// Arrival times in microseconds from the trace's start, sorted.
pub fn parse(text: &str, rng: &mut Rng) -> Result<Vec<u64>, TraceError> {
    let mut spans: Vec<(f64, f64, u64)> = Vec::new();
    let mut seen_row = false;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fail = |message: String| TraceError {
            line: i + 1,
            message,
        };
        let cols: Vec<&str> = line.split(',').map(str::trim).collect();
        let first_row = !seen_row;
        seen_row = true;
        if first_row && cols[0].parse::<f64>().is_err() {
            continue; // a header
        }
        let time = |text: &str| match text.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(v),
            _ => Err(fail(format!("{text:?} is not a time in seconds"))),
        };
        let count = |text: &str| {
            text.parse::<u64>()
                .map_err(|_| fail(format!("{text:?} is not a whole number of tasks")))
        };
        let span = match cols.as_slice() {
            [t] => {
                let t = time(t)?;
                (t, t, 1)
            }
            [t, n] => {
                let t = time(t)?;
                (t, t + 1.0, count(n)?)
            }
            [start, end, n] => {
                let (start, end) = (time(start)?, time(end)?);
                if end <= start {
                    return Err(fail(format!(
                        "the span ends ({end}) before it starts ({start})"
                    )));
                }
                (start, end, count(n)?)
            }
            _ => {
                return Err(fail(format!(
                    "{} columns; expected T, T,COUNT or START,END,COUNT",
                    cols.len()
                )));
            }
        };
        spans.push(span);
    }
    let Some(origin) = spans.iter().map(|s| s.0).min_by(f64::total_cmp) else {
        return Ok(Vec::new());
    };
    let total: u64 = spans.iter().map(|s| s.2).sum();
    let mut arrivals = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for (start, end, n) in spans {
        for _ in 0..n {
            let at = start + (end - start) * rng.uniform() - origin;
            arrivals.push((at * US).round() as u64);
        }
    }
    arrivals.sort_unstable();
    Ok(arrivals)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arrivals(text: &str) -> Result<Vec<u64>, TraceError> {
        parse(text, &mut Rng::new(1, 0))
    }

    #[test]
    fn each_row_form_and_the_origin() {
        let a = arrivals("time,count\n# a comment\n100.5\n\n102,3\n110,120,2\n").expect("parse");
        assert_eq!(a.len(), 6);
        assert_eq!(a[0], 0, "the earliest row is the start");
        assert!(
            a[1..4].iter().all(|t| (1_500_000..2_500_000).contains(t)),
            "{a:?}"
        );
        assert!(
            a[4..].iter().all(|t| (9_500_000..19_500_000).contains(t)),
            "{a:?}"
        );
        assert!(a.windows(2).all(|w| w[0] <= w[1]), "sorted");
    }

    #[test]
    fn the_same_seed_places_tasks_the_same_way() {
        let text = "0,100,50\n";
        assert_eq!(
            parse(text, &mut Rng::new(9, 0)),
            parse(text, &mut Rng::new(9, 0))
        );
        assert_ne!(
            parse(text, &mut Rng::new(9, 0)),
            parse(text, &mut Rng::new(10, 0))
        );
    }

    #[test]
    fn malformed_rows_name_their_line() {
        let cases = [
            ("0,1\n5,x\n", 2, "whole number"),
            ("0\n1,2,3,4\n", 2, "4 columns"),
            ("10,5,3\n", 1, "ends"),
            ("0\nsoon\n", 2, "not a time"),
        ];
        for (text, line, words) in cases {
            let err = arrivals(text).expect_err(text);
            assert_eq!(err.line, line, "{text:?}: {err}");
            assert!(err.message.contains(words), "{text:?}: {err}");
        }
        assert_eq!(arrivals("# nothing\n"), Ok(vec![]));
    }
}
