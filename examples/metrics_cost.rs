//! What recording a delivery costs on the hot path: `cargo run --release --example
//! metrics_cost`. Prints nanoseconds per delivered frame for the frame counter alone and
//! for the counter plus the publish-to-deliver histogram (an `Instant` read and a push),
//! on one thread and on two threads at once, and for what the streams actually do
//! (`DeliverySampler`: the counter on every frame, the histogram on one in 16).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use progress_hub::telemetry::{DeliverySampler, Metrics, Transport};

const FRAMES: u32 = 5_000_000;

fn per_frame(metrics: &Metrics, with_latency: bool) -> f64 {
    let published = Instant::now();
    let started = Instant::now();
    for _ in 0..FRAMES {
        metrics.frame_delivered(Transport::Sse);
        if with_latency {
            metrics.delivered_after(black_box(published).elapsed());
        }
    }
    started.elapsed().as_nanos() as f64 / f64::from(FRAMES)
}

fn sampled(metrics: &Arc<Metrics>) -> f64 {
    let mut sampler = DeliverySampler::new(Arc::clone(metrics), Transport::Sse);
    let started = Instant::now();
    for _ in 0..FRAMES {
        sampler.delivered(black_box(Instant::now()));
    }
    started.elapsed().as_nanos() as f64 / f64::from(FRAMES)
}

#[derive(Clone, Copy)]
enum Mode {
    Counter,
    Every,
    Sampled,
}

fn on_threads(metrics: &Arc<Metrics>, threads: usize, mode: Mode) -> f64 {
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let metrics = Arc::clone(metrics);
            std::thread::spawn(move || match mode {
                Mode::Counter => per_frame(&metrics, false),
                Mode::Every => per_frame(&metrics, true),
                Mode::Sampled => sampled(&metrics),
            })
        })
        .collect();
    let times: Vec<f64> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    times.iter().sum::<f64>() / times.len() as f64
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let metrics = Metrics::new();
    for threads in [1, 2] {
        let counter = on_threads(&metrics, threads, Mode::Counter);
        let every = on_threads(&metrics, threads, Mode::Every);
        let sampled = on_threads(&metrics, threads, Mode::Sampled);
        println!(
            "{threads} thread(s): counter {counter:.1} ns/frame, counter + histogram on every frame \
             {every:.1} ns/frame, as streams do it (histogram on 1 in 16, Instant::now included) \
             {sampled:.1} ns/frame"
        );
    }
    let started = Instant::now();
    let hub = progress_hub::hub::Hub::new(
        progress_hub::hub::HubConfig::default(),
        Arc::new(progress_hub::store::MemoryStore::new(1)),
    )
    .unwrap();
    let text = metrics.render(&hub);
    println!(
        "scrape after {} frames: {:?} ({} bytes)",
        6 * FRAMES,
        started.elapsed(),
        text.len()
    );
    tokio::time::sleep(Duration::from_millis(1)).await;
}
