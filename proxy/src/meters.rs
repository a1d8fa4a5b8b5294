//! The edge's per-request metrics as handles, looked up without building a
//! key. `metrics::counter!(name, "status" => status.to_string())` formats
//! the label, builds and hashes a key and takes the registry's lock on
//! every request: at tens of thousands of requests a second that was 4–5%
//! of the edge's CPU. Here each worker thread keeps the handles it has
//! used, found by the label's address and the status, so a request pays a
//! short scan and an atomic add.
//!
//! A handle belongs to the recorder installed when it was made: the edge
//! installs the process's recorder before it serves (`lib.rs`), so no
//! thread caches a handle that goes nowhere.

use std::cell::RefCell;

use metrics::{Counter, Histogram};

/// Handles one thread has made: route families, statuses and reasons are
/// bounded sets (`edge::route_label`, the refusal reasons), so each list
/// stays short.
#[derive(Default)]
struct Handles {
    requests: Vec<((usize, u16), Counter)>,
    durations: Vec<(usize, Histogram)>,
    rejections: Vec<(usize, Counter)>,
}

thread_local! {
    static HANDLES: RefCell<Handles> = RefCell::default();
}

/// Labels are `&'static str`; equal text at two addresses makes two
/// handles of one series, which is still right.
fn address(label: &'static str) -> usize {
    label.as_ptr() as usize
}

fn found<K: PartialEq + Copy, H: Clone>(
    list: &mut Vec<(K, H)>,
    key: K,
    make: impl FnOnce() -> H,
) -> H {
    if let Some((_, handle)) = list.iter().find(|(k, _)| *k == key) {
        return handle.clone();
    }
    let handle = make();
    list.push((key, handle.clone()));
    handle
}

/// One answered request: `flashmall_proxy_requests_total{route, status}`
/// and `flashmall_proxy_request_duration_seconds{route}`.
pub fn request(route: &'static str, status: u16, seconds: f64) {
    HANDLES.with_borrow_mut(|h| {
        found(&mut h.requests, (address(route), status), || {
            metrics::counter!("flashmall_proxy_requests_total", "route" => route, "status" => status.to_string())
        })
        .increment(1);
        found(&mut h.durations, address(route), || {
            metrics::histogram!("flashmall_proxy_request_duration_seconds", "route" => route)
        })
        .record(seconds);
    });
}

/// One refusal: `flashmall_proxy_rejections_total{reason}`.
pub fn rejection(reason: &'static str) {
    HANDLES.with_borrow_mut(|h| {
        found(
            &mut h.rejections,
            address(reason),
            || metrics::counter!("flashmall_proxy_rejections_total", "reason" => reason),
        )
        .increment(1);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(
        handle: &metrics_exporter_prometheus::PrometheusHandle,
        prefix: &str,
    ) -> Option<String> {
        handle
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(prefix).map(|v| v.trim().to_owned()))
    }

    #[test]
    fn each_request_and_refusal_is_counted_under_its_labels() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        // A thread of its own: the cache is per thread and must start
        // empty under this test's recorder.
        std::thread::spawn(move || {
            metrics::with_local_recorder(&recorder, || {
                for _ in 0..3 {
                    request("purchase", 409, 0.001);
                }
                request("purchase", 201, 0.002);
                request("health", 200, 0.0001);
                rejection("sold_out_gate");
                rejection("sold_out_gate");
                rejection("rate_limited");
            });
        })
        .join()
        .unwrap();
        let count = |series: &str| rendered(&handle, series);
        assert_eq!(
            count("flashmall_proxy_requests_total{route=\"purchase\",status=\"409\"} ").as_deref(),
            Some("3")
        );
        assert_eq!(
            count("flashmall_proxy_requests_total{route=\"purchase\",status=\"201\"} ").as_deref(),
            Some("1")
        );
        assert_eq!(
            count("flashmall_proxy_requests_total{route=\"health\",status=\"200\"} ").as_deref(),
            Some("1")
        );
        assert_eq!(
            count("flashmall_proxy_request_duration_seconds_count{route=\"purchase\"} ").as_deref(),
            Some("4")
        );
        assert_eq!(
            count("flashmall_proxy_rejections_total{reason=\"sold_out_gate\"} ").as_deref(),
            Some("2")
        );
        assert_eq!(
            count("flashmall_proxy_rejections_total{reason=\"rate_limited\"} ").as_deref(),
            Some("1")
        );
    }
}
