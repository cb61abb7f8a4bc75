//! Metrics as every component encodes its own: a registry of parts of the
//! running service, each encoding its families at scrape time through
//! `prometheus-client`, and the latency histogram they share. This module
//! knows no other (any step may encode its metrics).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::collector::Collector;
pub use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::encoding::{EncodeGaugeValue, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;
pub use prometheus_client::registry::Registry;

/// Upper bounds of the latency buckets, in microseconds.
const LATENCY_BUCKETS_US: [u64; 14] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
];

/// A fixed-bucket latency histogram.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        if let Some(i) = LATENCY_BUCKETS_US.iter().position(|bound| us <= *bound)
            && let Some(bucket) = self.buckets.get(i)
        {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// The histogram as one metric family, in seconds.
    ///
    /// # Errors
    /// Writing to the encoder failed.
    pub fn encode(&self, encoder: &mut DescriptorEncoder, name: &str, help: &str) -> fmt::Result {
        let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS_US
            .iter()
            .zip(&self.buckets)
            .map(|(bound, count)| (*bound as f64 / 1e6, count.load(Ordering::Relaxed)))
            .collect();
        encoder
            .encode_descriptor(name, help, None, MetricType::Histogram)?
            .encode_histogram::<NoLabelSet>(
                self.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
                self.count.load(Ordering::Relaxed),
                &buckets,
                None,
            )
    }
}

/// A part of the running service that owns metrics, and encodes them at
/// each scrape: `Weak`, so the registry does not keep the service alive.
pub struct Part<T: Send + Sync + 'static> {
    owner: std::sync::Weak<T>,
    encode: fn(&T, &mut DescriptorEncoder) -> fmt::Result,
}

impl<T: Send + Sync + 'static> Part<T> {
    pub fn new(
        owner: std::sync::Weak<T>,
        encode: fn(&T, &mut DescriptorEncoder) -> fmt::Result,
    ) -> Self {
        Self { owner, encode }
    }
}

impl<T: Send + Sync + 'static> std::fmt::Debug for Part<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Part").finish_non_exhaustive()
    }
}

impl<T: Send + Sync + 'static> Collector for Part<T> {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        match self.owner.upgrade() {
            Some(owner) => (self.encode)(&owner, &mut encoder),
            None => Ok(()),
        }
    }
}

/// The registry's metrics in Prometheus' text format (version 0.0.4).
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, registry) {
        tracing::error!(error = %e, "cannot encode the metrics");
    }
    out
}

/// `Content-Type` of [`encode`]'s text.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// A counter: `name` ends in `_total`, which the encoder adds itself.
///
/// # Errors
/// Writing to the encoder failed.
pub fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    let name = name.strip_suffix("_total").unwrap_or(name);
    encoder
        .encode_descriptor(name, help, None, MetricType::Counter)?
        .encode_counter::<NoLabelSet, _, u64>(&value, None)
}

/// A counter family, one sample per label set.
///
/// # Errors
/// Writing to the encoder failed.
pub fn counters<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[(L, u64)],
) -> fmt::Result {
    let name = name.strip_suffix("_total").unwrap_or(name);
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in samples {
        family
            .encode_family(labels)?
            .encode_counter::<NoLabelSet, _, u64>(value, None)?;
    }
    Ok(())
}

/// A gauge.
///
/// # Errors
/// Writing to the encoder failed.
pub fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: impl EncodeGaugeValue,
) -> fmt::Result {
    encoder
        .encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_gauge(&value)
}

/// A gauge family, one sample per label set.
///
/// # Errors
/// Writing to the encoder failed.
pub fn gauges<L: EncodeLabelSet, V: EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[(L, V)],
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in samples {
        family.encode_family(labels)?.encode_gauge(value)?;
    }
    Ok(())
}

/// The text of one part's metrics alone (for its tests).
#[cfg(test)]
pub fn text_of<T: Send + Sync + 'static>(
    owner: &std::sync::Arc<T>,
    encode: fn(&T, &mut DescriptorEncoder) -> fmt::Result,
) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Part::new(
        std::sync::Arc::downgrade(owner),
        encode,
    )));
    self::encode(&registry)
}

/// The sum of the samples of `name` (a family name, or a name with its
/// labels as written, `name{label="value"}`) in Prometheus text, `None`
/// when there is none: what tests and tools read back from `/metrics`.
#[cfg(feature = "test-support")]
pub fn sum_of(text: &str, name: &str) -> Option<f64> {
    let samples: Vec<f64> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!samples.is_empty()).then(|| samples.iter().sum())
}
