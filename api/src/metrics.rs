//! HTTP metrics under Docker Distribution's names.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

/// Request counters, in-flight gauges and latency histograms, labelled by endpoint.
#[derive(Clone)]
pub struct HttpMetrics {
    requests: IntCounterVec,
    in_flight: IntGaugeVec,
    duration: HistogramVec,
}

/// Decrements the in-flight gauge when the request ends, however it ends.
pub struct InFlight(prometheus::IntGauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl HttpMetrics {
    /// Creates the metrics and registers them.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new("registry_http_requests_total", "Total number of HTTP requests made."),
            &["method", "code", "handler"],
        )?;
        let in_flight = IntGaugeVec::new(
            Opts::new("registry_http_in_flight_requests", "The in-flight HTTP requests."),
            &["handler"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new("registry_http_request_duration_seconds", "The HTTP request latencies in seconds.")
                .buckets(vec![0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]),
            &["method", "handler"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        Ok(HttpMetrics { requests, in_flight, duration })
    }

    /// Marks a request as started.
    pub fn start(&self, handler: &str) -> InFlight {
        let g = self.in_flight.with_label_values(&[handler]);
        g.inc();
        InFlight(g)
    }

    /// Records a finished request.
    pub fn finish(&self, method: &str, handler: &str, code: u16, seconds: f64) {
        self.requests.with_label_values(&[method, &code.to_string(), handler]).inc();
        self.duration.with_label_values(&[method, handler]).observe(seconds);
    }
}
