//! How long a task runs once claimed: `--service-time`, a distribution to draw from.
//!
//! `fixed:S` (or a bare number), `exp:MEAN`, `lognormal:MEAN,SIGMA` (the mean of the
//! durations and the standard deviation of their logarithm), or `file:PATH`, an empirical
//! sample with one duration in seconds per line (such as the `processing_ms` samples of a
//! real queue, divided by 1000), drawn from uniformly. All in seconds.

use std::fmt;
use std::path::PathBuf;

use super::SimulateError;
use super::rng::Rng;

/// A service-time distribution, in seconds.
#[derive(Debug, Clone, PartialEq)]
pub enum ServiceTime {
    Fixed(f64),
    Exponential { mean: f64 },
    LogNormal { mean: f64, sigma: f64 },
    Empirical { path: PathBuf, samples: Vec<f64> },
}

const FLAG: &str = "--service-time";

fn flag_error(message: impl Into<String>) -> SimulateError {
    SimulateError::Flag {
        flag: FLAG,
        message: message.into(),
    }
}

fn seconds(text: &str, what: &str) -> Result<f64, SimulateError> {
    match text.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(flag_error(format!(
            "{what} {text:?} is not a number of seconds ≥ 0"
        ))),
    }
}

impl ServiceTime {
    /// Parses a `--service-time` value, reading the sample file of `file:PATH`.
    pub fn parse(spec: &str) -> Result<Self, SimulateError> {
        let (kind, args) = spec.split_once(':').unwrap_or(("fixed", spec));
        match kind {
            "fixed" => Ok(Self::Fixed(seconds(args, "the duration")?)),
            "exp" => {
                let mean = seconds(args, "the mean")?;
                if mean == 0.0 {
                    return Err(flag_error("exp: the mean must be above 0"));
                }
                Ok(Self::Exponential { mean })
            }
            "lognormal" => {
                let (mean, sigma) = args.split_once(',').ok_or_else(|| {
                    flag_error("lognormal needs MEAN,SIGMA, e.g. lognormal:3,0.5")
                })?;
                let (mean, sigma) = (seconds(mean, "the mean")?, seconds(sigma, "sigma")?);
                if mean == 0.0 {
                    return Err(flag_error("lognormal: the mean must be above 0"));
                }
                Ok(Self::LogNormal { mean, sigma })
            }
            "file" => {
                let path = PathBuf::from(args);
                let text =
                    std::fs::read_to_string(&path).map_err(|source| SimulateError::File {
                        what: "the --service-time sample file",
                        path: path.clone(),
                        source,
                    })?;
                let samples = parse_samples(&text).map_err(|(line, message)| {
                    flag_error(format!("{} line {line}: {message}", path.display()))
                })?;
                Ok(Self::Empirical { path, samples })
            }
            other => Err(flag_error(format!(
                "unknown distribution {other:?}: use fixed:S, exp:MEAN, lognormal:MEAN,SIGMA or file:PATH"
            ))),
        }
    }

    /// One task's duration in seconds.
    pub fn sample(&self, rng: &mut Rng) -> f64 {
        match self {
            Self::Fixed(s) => *s,
            Self::Exponential { mean } => rng.exponential(*mean),
            Self::LogNormal { mean, sigma } => {
                // E[e^(μ + σZ)] = e^(μ + σ²/2), so μ = ln(mean) − σ²/2 keeps the mean as given.
                let mu = mean.ln() - sigma * sigma / 2.0;
                (mu + sigma * rng.normal()).exp()
            }
            Self::Empirical { samples, .. } => samples[rng.below(samples.len())],
        }
    }
}

/// Durations, one per line; blank lines and `#` comments skipped; at least one.
fn parse_samples(text: &str) -> Result<Vec<f64>, (usize, String)> {
    let mut samples = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.parse::<f64>() {
            Ok(v) if v.is_finite() && v >= 0.0 => samples.push(v),
            _ => return Err((i + 1, format!("{line:?} is not a number of seconds ≥ 0"))),
        }
    }
    if samples.is_empty() {
        return Err((0, "no samples".into()));
    }
    Ok(samples)
}

impl fmt::Display for ServiceTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fixed(s) => write!(f, "fixed:{s}"),
            Self::Exponential { mean } => write!(f, "exp:{mean}"),
            Self::LogNormal { mean, sigma } => write!(f, "lognormal:{mean},{sigma}"),
            Self::Empirical { path, .. } => write!(f, "file:{}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_form_and_names_the_flag_on_errors() {
        assert_eq!(
            ServiceTime::parse("2.5").ok(),
            Some(ServiceTime::Fixed(2.5))
        );
        assert_eq!(
            ServiceTime::parse("exp:3").ok(),
            Some(ServiceTime::Exponential { mean: 3.0 })
        );
        assert_eq!(
            ServiceTime::parse("lognormal:3,0.5").ok(),
            Some(ServiceTime::LogNormal {
                mean: 3.0,
                sigma: 0.5
            })
        );
        for bad in ["gamma:2", "exp:-1", "exp:0", "lognormal:3", "fixed:x"] {
            let err = ServiceTime::parse(bad).expect_err(bad).to_string();
            assert!(err.starts_with("--service-time: "), "{bad}: {err}");
        }
    }

    #[test]
    fn an_empirical_sample_is_drawn_from_its_values() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("samples.txt");
        std::fs::write(&path, "# seconds\n1.5\n\n4\n").expect("write");
        let st = ServiceTime::parse(&format!("file:{}", path.display())).expect("parse");
        let mut rng = Rng::new(1, 0);
        let draws: Vec<f64> = (0..100).map(|_| st.sample(&mut rng)).collect();
        assert!(draws.iter().all(|d| *d == 1.5 || *d == 4.0));
        assert!(draws.contains(&1.5) && draws.contains(&4.0));
        std::fs::write(&path, "1\nfast\n").expect("write");
        let err = ServiceTime::parse(&format!("file:{}", path.display()))
            .expect_err("bad sample")
            .to_string();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn lognormal_keeps_the_mean() {
        let st = ServiceTime::LogNormal {
            mean: 3.0,
            sigma: 0.8,
        };
        let mut rng = Rng::new(3, 0);
        let n = 200_000;
        let mean = (0..n).map(|_| st.sample(&mut rng)).sum::<f64>() / n as f64;
        assert!((mean - 3.0).abs() < 0.06, "mean {mean}");
    }
}
