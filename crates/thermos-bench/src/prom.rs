//! Reading the server's `GET /metrics` (the Prometheus text format): sums
//! of counters by label, and histograms with quantiles estimated the way
//! Prometheus's `histogram_quantile` does (linear within a bucket).
//!
//! Only what the benchmarks read; it never guesses below a bucket's
//! resolution: every quantile comes with the bounds of its bucket.

use std::collections::BTreeMap;

use anyhow::Context as _;

/// One sample line: name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Every sample of a scrape.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    pub samples: Vec<Sample>,
}

impl Scrape {
    /// Parses the text exposition (comment lines skipped).
    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
            .filter_map(parse_line)
            .collect();
        Self { samples }
    }

    /// `GET {base}/metrics`.
    pub async fn fetch(http: &reqwest::Client, base: &str) -> anyhow::Result<Self> {
        let text = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .context("GET /metrics")?
            .text()
            .await
            .context("read /metrics")?;
        Ok(Self::parse(&text))
    }

    /// The sum of `name` over the samples whose labels include every pair
    /// of `with` (0 when there is none).
    pub fn sum(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| {
                s.name == name
                    && with
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }

    /// The histogram `name` (summed over its label sets).
    pub fn histogram(&self, name: &str) -> Histogram {
        let mut buckets: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
        for sample in self.samples.iter().filter(|s| s.name == format!("{name}_bucket")) {
            let Some(le) = sample.labels.get("le") else { continue };
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::NAN)
            };
            if bound.is_nan() {
                continue;
            }
            buckets.entry(bound.to_bits()).or_insert((bound, 0.0)).1 += sample.value;
        }
        let mut buckets: Vec<(f64, f64)> = buckets.into_values().collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Histogram {
            buckets,
            sum: self.sum(&format!("{name}_sum"), &[]),
            count: self.sum(&format!("{name}_count"), &[]),
        }
    }
}

/// `name{k="v",…} value` (no timestamp support needed: the exporter writes none).
fn parse_line(line: &str) -> Option<Sample> {
    let (head, value) = line.rsplit_once(' ')?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().ok()?,
    };
    let (name, labels) = match head.split_once('{') {
        Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}')?)?),
        None => (head, BTreeMap::new()),
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// `k="v",k2="v2"` (values with `\"`, `\\` and `\n` escapes).
fn parse_labels(text: &str) -> Option<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i,
                other => value.push(other),
            }
        };
        labels.insert(key.trim_start_matches(',').trim().to_owned(), value);
        rest = after[end + 1..].trim_start_matches(',');
    }
    Some(labels)
}

/// A cumulative histogram: (upper bound, observations ≤ bound), ascending.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    pub buckets: Vec<(f64, f64)>,
    pub sum: f64,
    pub count: f64,
}

/// A quantile estimate and the bucket it lies in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// Linear within the bucket, as `histogram_quantile`.
    pub value: f64,
    /// The bucket's bounds: the true value is in (lower, upper].
    pub lower: f64,
    pub upper: f64,
}

impl Histogram {
    /// The observations made between `earlier` and this one.
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        let before = |bound: f64| {
            earlier
                .buckets
                .iter()
                .find(|(b, _)| *b == bound)
                .map_or(0.0, |(_, n)| *n)
        };
        Histogram {
            buckets: self.buckets.iter().map(|(b, n)| (*b, n - before(*b))).collect(),
            sum: self.sum - earlier.sum,
            count: self.count - earlier.count,
        }
    }

    /// The mean observation.
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0.0).then(|| self.sum / self.count)
    }

    /// The `q` quantile (0 < q ≤ 1); `None` without observations.
    pub fn quantile(&self, q: f64) -> Option<Estimate> {
        if self.count <= 0.0 {
            return None;
        }
        let rank = q * self.count;
        let mut lower = 0.0;
        let mut below = 0.0;
        for &(upper, cumulative) in &self.buckets {
            if cumulative >= rank && cumulative > below {
                let value = if upper.is_infinite() {
                    lower
                } else {
                    lower + (upper - lower) * (rank - below) / (cumulative - below)
                };
                return Some(Estimate { value, lower, upper });
            }
            if cumulative > below {
                below = cumulative;
            }
            lower = upper;
        }
        None
    }

    /// The bucket holding the largest observation.
    pub fn max(&self) -> Option<Estimate> {
        if self.count <= 0.0 {
            return None;
        }
        let mut lower = 0.0;
        for &(upper, cumulative) in &self.buckets {
            // The first bucket holding every observation holds the largest.
            if cumulative >= self.count {
                return Some(Estimate {
                    value: upper,
                    lower,
                    upper,
                });
            }
            lower = upper;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# TYPE thermos_refresh_lateness_seconds histogram
thermos_refresh_lateness_seconds_bucket{le="0.005"} 60
thermos_refresh_lateness_seconds_bucket{le="0.01"} 90
thermos_refresh_lateness_seconds_bucket{le="0.025"} 100
thermos_refresh_lateness_seconds_bucket{le="+Inf"} 100
thermos_refresh_lateness_seconds_sum 0.4
thermos_refresh_lateness_seconds_count 100
thermos_refresh_attempts_total{provider="bench",outcome="success",error_class="none"} 7
thermos_refresh_attempts_total{provider="bench",outcome="failed",error_class="server_error"} 2
thermos_tokens_served_expired_total 0
"#;

    #[test]
    fn counters_are_summed_over_the_label_sets_asked_for() {
        let scrape = Scrape::parse(TEXT);
        assert_eq!(scrape.sum("thermos_refresh_attempts_total", &[]), 9.0);
        assert_eq!(
            scrape.sum("thermos_refresh_attempts_total", &[("outcome", "success")]),
            7.0
        );
        assert_eq!(scrape.sum("thermos_tokens_served_expired_total", &[]), 0.0);
        assert_eq!(scrape.sum("absent", &[]), 0.0);
    }

    #[test]
    fn quantiles_interpolate_within_their_bucket_and_name_its_bounds() {
        let lateness = Scrape::parse(TEXT).histogram("thermos_refresh_lateness_seconds");
        assert_eq!(lateness.count, 100.0);
        let p50 = lateness.quantile(0.5).unwrap();
        assert!((p50.value - 0.005 * 50.0 / 60.0).abs() < 1e-12, "{p50:?}");
        assert_eq!((p50.lower, p50.upper), (0.0, 0.005));
        let p99 = lateness.quantile(0.99).unwrap();
        assert_eq!((p99.lower, p99.upper), (0.01, 0.025));
        let max = lateness.max().unwrap();
        assert_eq!((max.lower, max.upper), (0.01, 0.025));
        assert!((lateness.mean().unwrap() - 0.004).abs() < 1e-12);
    }

    #[test]
    fn a_histogram_since_an_earlier_scrape_holds_only_the_new_observations() {
        let later = Scrape::parse(TEXT).histogram("thermos_refresh_lateness_seconds");
        let earlier = Histogram {
            buckets: vec![(0.005, 60.0), (0.01, 60.0), (0.025, 60.0), (f64::INFINITY, 60.0)],
            sum: 0.1,
            count: 60.0,
        };
        let new = later.since(&earlier);
        assert_eq!(new.count, 40.0);
        assert_eq!(new.quantile(0.5).unwrap().upper, 0.01);
        assert_eq!(new.max().unwrap().upper, 0.025);
        assert!(Histogram::default().quantile(0.5).is_none());
    }
}
