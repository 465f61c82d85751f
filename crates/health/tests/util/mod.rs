//! Fake backends with scripted probe results, and a recorder that keeps metric values.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, Key, KeyName, Metadata, Recorder, SharedString,
    Unit,
};
use parking_lot::Mutex;
use switchyard_core::openai::Model;
use switchyard_core::{
    Backend, BackendError, BackendId, BackendRequest, BackendResponse, BoxFuture, ErrorCode,
};
use tokio::time::{Duration, Instant};

/// What one probe does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    Ok,
    /// Connection refused.
    Fail,
    /// 503 while loading.
    Warming,
    /// Never answers.
    Hang,
    /// Answers after this long.
    Slow(Duration),
}

/// A backend whose probes follow a script, then repeat `then` forever.
pub(crate) struct FakeBackend {
    id: BackendId,
    script: Mutex<VecDeque<Step>>,
    then: Mutex<Step>,
    probes: Mutex<Vec<Instant>>,
}

impl FakeBackend {
    pub(crate) fn new(
        name: &str,
        script: impl IntoIterator<Item = Step>,
        then: Step,
    ) -> Arc<FakeBackend> {
        Arc::new(FakeBackend {
            id: BackendId::new(name),
            script: Mutex::new(script.into_iter().collect()),
            then: Mutex::new(then),
            probes: Mutex::new(Vec::new()),
        })
    }

    /// From now on every probe does `step` (kill or restart the backend).
    pub(crate) fn set(&self, step: Step) {
        self.script.lock().clear();
        *self.then.lock() = step;
    }

    /// When each probe started, relative to `start`, in milliseconds.
    pub(crate) fn probe_times(&self, start: Instant) -> Vec<u64> {
        self.probes.lock().iter().map(|t| t.duration_since(start).as_millis() as u64).collect()
    }

    pub(crate) fn as_dyn(self: &Arc<Self>) -> Arc<dyn Backend> {
        Arc::clone(self) as Arc<dyn Backend>
    }
}

impl Backend for FakeBackend {
    fn id(&self) -> &BackendId {
        &self.id
    }

    fn send(
        &self,
        _request: BackendRequest,
    ) -> BoxFuture<'_, Result<BackendResponse, BackendError>> {
        Box::pin(async { Err(BackendError::new(ErrorCode::Unsupported, "fake backend")) })
    }

    fn models(&self) -> BoxFuture<'_, Result<Vec<Model>, BackendError>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        self.probes.lock().push(Instant::now());
        let step = self.script.lock().pop_front().unwrap_or(*self.then.lock());
        Box::pin(async move {
            match step {
                Step::Ok => Ok(()),
                Step::Fail => {
                    Err(BackendError::new(ErrorCode::UpstreamUnavailable, "connection refused"))
                }
                Step::Warming => Err(BackendError::new(ErrorCode::Overloaded, "loading model")),
                Step::Hang => std::future::pending().await,
                Step::Slow(d) => {
                    tokio::time::sleep(d).await;
                    Ok(())
                }
            }
        })
    }
}

/// A recorder that keeps the last value of every gauge and the total of every counter,
/// keyed by `name{label=value,...}` with labels in the order given.
#[derive(Default)]
pub(crate) struct TestRecorder {
    values: Mutex<HashMap<String, Arc<Cell>>>,
}

#[derive(Default)]
pub(crate) struct Cell(AtomicU64);

impl TestRecorder {
    pub(crate) fn get(&self, key: &str) -> Option<f64> {
        self.values.lock().get(key).map(|c| f64::from_bits(c.0.load(Ordering::SeqCst)))
    }

    fn cell(&self, key: &Key) -> Arc<Cell> {
        let labels: Vec<String> =
            key.labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
        let name = if labels.is_empty() {
            key.name().to_owned()
        } else {
            format!("{}{{{}}}", key.name(), labels.join(","))
        };
        Arc::clone(self.values.lock().entry(name).or_default())
    }
}

impl GaugeFn for Cell {
    fn increment(&self, value: f64) {
        let _ = self.0.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| {
            Some((f64::from_bits(b) + value).to_bits())
        });
    }

    fn decrement(&self, value: f64) {
        GaugeFn::increment(self, -value);
    }

    fn set(&self, value: f64) {
        self.0.store(value.to_bits(), Ordering::SeqCst);
    }
}

impl CounterFn for Cell {
    fn increment(&self, value: u64) {
        GaugeFn::increment(self, value as f64);
    }

    fn absolute(&self, value: u64) {
        GaugeFn::set(self, value as f64);
    }
}

impl Recorder for TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.cell(key))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.cell(key))
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}
