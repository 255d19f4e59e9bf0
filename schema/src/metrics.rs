//! Metric families as every stage declares them for the `prometheus` crate: a [`Family`] is
//! a family's name, help, type and label names, declared once; at scrape time it turns the
//! values a stage's collector reads off its own counters into the crate's
//! [`MetricFamily`], which a node's [`Registry`] gathers and [`encode`] writes as text.
//!
//! The stages keep their hot-path counters (atomics, the engine's plain stats): a
//! `prometheus::core::Collector` reads them when /metrics is asked for, so counting costs
//! what it did. Metric names and label names are a public interface (dashboards, alert
//! rules and users' queries name them; `tests/metrics_golden.rs` holds the list).
//!
//! Label pairs are written in declaration order, the order /metrics has always shown
//! them: the crate's own metric vectors would sort them by name, which changes no series
//! but does change the text people grep for.

pub use prometheus::core::Desc;
use prometheus::proto::{self, LabelPair, MetricFamily, MetricType};
use prometheus::{Encoder, Registry, TextEncoder};

/// Declares a stage's families once: a struct with one [`Family`] per field, its static
/// instance (built on first use), and `descs()`, every family's [`Desc`] for the stage
/// collector's `desc()`, so that a family cannot be declared and then left out of it.
///
/// ```
/// toctou_schema::families! {
///     /// The sink's families.
///     static FAMILIES: Families {
///         rows = counter("toctou_sink_rows_total", "Rows written.", &["table"]);
///         backlog = gauge("toctou_sink_backlog_rows", "Rows waiting.", &[]);
///     }
/// }
/// assert_eq!(FAMILIES.descs().len(), 2);
/// assert_eq!(FAMILIES.rows.name(), "toctou_sink_rows_total");
/// ```
#[macro_export]
macro_rules! families {
    (
        $(#[$meta:meta])*
        static $name:ident: $ty:ident {
            $($field:ident = $kind:ident($($arg:expr),* $(,)?);)*
        }
    ) => {
        $(#[$meta])*
        struct $ty {
            $($field: $crate::metrics::Family,)*
        }

        impl $ty {
            /// Every family's descriptor, in declaration order.
            fn descs(&self) -> Vec<&$crate::metrics::Desc> {
                vec![$(self.$field.desc()),*]
            }
        }

        static $name: std::sync::LazyLock<$ty> = std::sync::LazyLock::new(|| $ty {
            $($field: $crate::metrics::Family::$kind($($arg),*),)*
        });
    };
}

/// One metric family: what `# HELP` and `# TYPE` announce, and the names of its labels.
#[derive(Debug)]
pub struct Family {
    desc: Desc,
    kind: MetricType,
}

impl Family {
    pub fn counter(name: &str, help: &str, labels: &[&str]) -> Family {
        Family::new(MetricType::COUNTER, name, help, labels)
    }

    pub fn gauge(name: &str, help: &str, labels: &[&str]) -> Family {
        Family::new(MetricType::GAUGE, name, help, labels)
    }

    /// A histogram without labels (`le` is the encoder's).
    pub fn histogram(name: &str, help: &str) -> Family {
        Family::new(MetricType::HISTOGRAM, name, help, &[])
    }

    /// Panics on an invalid name or label name: declarations are constants, and every
    /// node's registry is built by a test.
    fn new(kind: MetricType, name: &str, help: &str, labels: &[&str]) -> Family {
        let labels = labels.iter().map(|l| l.to_string()).collect();
        let desc = Desc::new(name.into(), help.into(), labels, Default::default())
            .unwrap_or_else(|err| panic!("metric family {name}: {err}"));
        Family { desc, kind }
    }

    /// What a collector's `desc()` lists, so that the registry refuses a family declared
    /// twice.
    pub fn desc(&self) -> &Desc {
        &self.desc
    }

    pub fn name(&self) -> &str {
        &self.desc.fq_name
    }

    /// The family with its one unlabelled sample (a counter's or a gauge's).
    pub fn value(&self, value: f64) -> MetricFamily {
        self.values([([], value)])
    }

    /// The family with a sample per set of label values (given in declaration order).
    pub fn values<'a, L>(&self, samples: impl IntoIterator<Item = (L, f64)>) -> MetricFamily
    where
        L: AsRef<[&'a str]>,
    {
        let mut family = self.empty();
        for (labels, value) in samples {
            let mut metric = proto::Metric::from_label(self.label_pairs(labels.as_ref()));
            match self.kind {
                MetricType::COUNTER => {
                    let mut counter = proto::Counter::default();
                    counter.set_value(value);
                    metric.set_counter(counter);
                }
                MetricType::GAUGE => {
                    let mut gauge = proto::Gauge::default();
                    gauge.set_value(value);
                    metric.set_gauge(gauge);
                }
                kind => panic!("{}: a {kind:?} has no single value", self.name()),
            }
            family.mut_metric().push(metric);
        }
        family
    }

    /// The histogram's one sample: `buckets` are (upper bound, observations at or below
    /// it), cumulative and without `+Inf` (which is `count`).
    pub fn histogram_value(
        &self,
        buckets: impl IntoIterator<Item = (f64, u64)>,
        sum: f64,
        count: u64,
    ) -> MetricFamily {
        assert_eq!(self.kind, MetricType::HISTOGRAM, "{}", self.name());
        let mut histogram = proto::Histogram::default();
        let buckets = buckets
            .into_iter()
            .map(|(upper_bound, cumulative)| {
                let mut bucket = proto::Bucket::default();
                bucket.set_upper_bound(upper_bound);
                bucket.set_cumulative_count(cumulative);
                bucket
            })
            .collect();
        histogram.set_bucket(buckets);
        histogram.set_sample_sum(sum);
        histogram.set_sample_count(count);
        let mut metric = proto::Metric::default();
        metric.set_histogram(histogram);
        let mut family = self.empty();
        family.mut_metric().push(metric);
        family
    }

    fn empty(&self) -> MetricFamily {
        let mut family = MetricFamily::default();
        family.set_name(self.desc.fq_name.clone());
        family.set_help(self.desc.help.clone());
        family.set_field_type(self.kind);
        family
    }

    fn label_pairs(&self, values: &[&str]) -> Vec<LabelPair> {
        let names = &self.desc.variable_labels;
        assert_eq!(
            names.len(),
            values.len(),
            "{}: label values {values:?} for {names:?}",
            self.name()
        );
        names
            .iter()
            .zip(values)
            .map(|(name, value)| {
                let mut pair = LabelPair::default();
                pair.set_name(name.clone());
                pair.set_value(value.to_string());
                pair
            })
            .collect()
    }
}

/// Every family of `registry` in the Prometheus text format 0.0.4, by the crate's encoder
/// (which escapes label values and help texts).
pub fn encode(registry: &Registry) -> prometheus::Result<String> {
    let mut text = Vec::with_capacity(8 * 1024);
    TextEncoder::new().encode(&registry.gather(), &mut text)?;
    // The encoder writes only strings it was given.
    Ok(String::from_utf8(text).expect("the text encoder writes UTF-8"))
}

/// The text of a registry holding only `collector`: what tests of one stage's families read.
pub fn encode_one(collector: impl prometheus::core::Collector + 'static) -> String {
    let registry = Registry::new();
    registry
        .register(Box::new(collector))
        .expect("a collector's families are declared once");
    encode(&registry).expect("encoding metric families")
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::core::Collector;

    struct Two {
        counter: Family,
        histogram: Family,
    }

    impl Collector for Two {
        fn desc(&self) -> Vec<&Desc> {
            vec![self.counter.desc(), self.histogram.desc()]
        }
        fn collect(&self) -> Vec<MetricFamily> {
            vec![
                self.counter
                    .values([(["b\"\\\n", "x"], 2.0), (["a", "y"], 1.0)]),
                self.histogram
                    .histogram_value([(0.0001, 1), (1.0, 3)], 1.5, 4),
            ]
        }
    }

    #[test]
    fn families_render_with_labels_in_declaration_order_and_escaped() {
        let text = encode_one(Two {
            counter: Family::counter("t_total", "Things.", &["z", "a"]),
            histogram: Family::histogram("t_seconds", "Times."),
        });
        assert_eq!(
            text,
            "# HELP t_seconds Times.\n# TYPE t_seconds histogram\n\
             t_seconds_bucket{le=\"0.0001\"} 1\nt_seconds_bucket{le=\"1\"} 3\n\
             t_seconds_bucket{le=\"+Inf\"} 4\nt_seconds_sum 1.5\nt_seconds_count 4\n\
             # HELP t_total Things.\n# TYPE t_total counter\n\
             t_total{z=\"a\",a=\"y\"} 1\nt_total{z=\"b\\\"\\\\\\n\",a=\"x\"} 2\n"
        );
    }

    #[test]
    fn a_family_declared_twice_is_refused() {
        let registry = Registry::new();
        let two = || Two {
            counter: Family::counter("t_total", "Things.", &[]),
            histogram: Family::histogram("t_seconds", "Times."),
        };
        registry.register(Box::new(two())).unwrap();
        assert!(registry.register(Box::new(two())).is_err());
    }
}
