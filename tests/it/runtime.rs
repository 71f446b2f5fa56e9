//! The worker runtime: retries, dead letters, sharing, shutdown and NATS restarts.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tars_jetstream::topology::{DLQ_STREAM, NOTIFIER, Topology, TopologyConfig};
use tars_jetstream::worker::{self, Delivery, Handler, Outcome, RetryPolicy, WorkerConfig};
use tars_observability::metrics::Metrics;
use tokio_util::sync::CancellationToken;

use crate::support::{LONG, Nats, eventually, submitted};

type HandlerFn = dyn Fn(Delivery) -> BoxFuture<'static, Outcome> + Send + Sync;

/// A handler made of a closure, so each test states its behaviour inline.
#[derive(Clone)]
struct FnHandler(Arc<HandlerFn>);

impl Handler for FnHandler {
    fn handle(&self, d: Delivery) -> impl Future<Output = Outcome> + Send {
        (self.0)(d)
    }
}

fn handler<F, Fut>(f: F) -> FnHandler
where
    F: Fn(Delivery) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    FnHandler(Arc::new(move |d| Box::pin(f(d))))
}

fn fast_config() -> WorkerConfig {
    WorkerConfig {
        concurrency: 16,
        max_deliver: 4,
        retry: RetryPolicy {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
        },
        wait: tars_jetstream::wait::WaitPolicy {
            base: Duration::from_millis(100),
            cap: Duration::from_millis(400),
        },
        unreadable_delay: Duration::from_millis(200),
        pull_expires: Duration::from_millis(500),
        shutdown_grace: Duration::from_millis(300),
        progress_interval: Duration::from_secs(5),
        health: Default::default(),
    }
}

struct Running {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    metrics: Metrics,
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap();
    }

    fn count(&self, outcome: &str) -> u64 {
        self.metrics
            .worker_messages
            .with_label_values(&[NOTIFIER.name, outcome])
            .get()
    }
}

fn spawn_worker(topology: &Topology, h: FnHandler, cfg: WorkerConfig) -> Running {
    let shutdown = CancellationToken::new();
    let metrics = Metrics::new();
    let task = tokio::spawn({
        let (t, s, m) = (topology.clone(), shutdown.clone(), metrics.clone());
        async move { worker::run(NOTIFIER, t, h, cfg, m, s).await.unwrap() }
    });
    Running {
        shutdown,
        task,
        metrics,
    }
}

async fn publish_n(nats: &Nats, n: usize) -> Vec<String> {
    let publisher = nats.publisher();
    let mut ids = Vec::new();
    for i in 0..n {
        let env = submitted(i);
        ids.push(env.request_id.to_string());
        publisher.publish_transition(&env).await.unwrap();
    }
    ids
}

async fn consumer_idle(nats: &Nats) -> bool {
    tars_tests::consumer_backlog(&nats.topology.events, NOTIFIER.name).await == Some(0)
}

#[tokio::test]
async fn a_handler_that_fails_twice_is_acked_on_the_third_delivery_with_growing_delays() {
    let nats = Nats::start().await;
    let seen: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let h = handler({
        let seen = seen.clone();
        move |d: Delivery| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(Instant::now());
                if d.delivered < 3 {
                    Outcome::retry("not yet")
                } else {
                    Outcome::Ack
                }
            }
        }
    });
    let w = spawn_worker(&nats.topology, h, fast_config());
    publish_n(&nats, 1).await;
    eventually(LONG, "the ack", || async {
        (w.count("ack") == 1).then_some(())
    })
    .await;
    eventually(LONG, "consumer idle", || async {
        consumer_idle(&nats).await.then_some(())
    })
    .await;
    let times = seen.lock().unwrap().clone();
    assert_eq!(times.len(), 3);
    let (d1, d2) = (times[1] - times[0], times[2] - times[1]);
    assert!(d1 >= Duration::from_millis(100), "first delay {d1:?}");
    assert!(d2 >= Duration::from_millis(200), "second delay {d2:?}");
    assert!(d2 > d1, "delays must grow: {d1:?} then {d2:?}");
    assert_eq!(w.count("retry"), 2);
    assert_eq!(nats.stream_len(DLQ_STREAM).await, 0);
    w.stop().await;
}

#[tokio::test]
async fn a_handler_that_panics_is_retried_and_the_worker_carries_on() {
    let nats = Nats::start().await;
    let h = handler(|d: Delivery| async move {
        if d.delivered == 1 {
            panic!("handler bug on {}", d.envelope.request_id);
        }
        Outcome::Ack
    });
    let w = spawn_worker(&nats.topology, h, fast_config());
    publish_n(&nats, 3).await;
    eventually(LONG, "three acks after three panics", || async {
        (w.count("ack") == 3 && w.count("retry") == 3).then_some(())
    })
    .await;
    assert_eq!(nats.stream_len(DLQ_STREAM).await, 0);
    w.stop().await;
}

#[tokio::test]
async fn a_permanent_failure_is_dead_lettered_once_with_all_headers() {
    let nats = Nats::start().await;
    let calls = Arc::new(Mutex::new(0));
    let h = handler({
        let calls = calls.clone();
        move |_d| {
            *calls.lock().unwrap() += 1;
            async { Outcome::dead_letter("tenant does not exist") }
        }
    });
    let w = spawn_worker(&nats.topology, h, fast_config());
    let ids = publish_n(&nats, 1).await;
    eventually(LONG, "one dead letter", || async {
        (nats.stream_len(DLQ_STREAM).await == 1).then_some(())
    })
    .await;
    eventually(LONG, "consumer idle", || async {
        consumer_idle(&nats).await.then_some(())
    })
    .await;
    assert_eq!(*calls.lock().unwrap(), 1, "termed, not redelivered");

    let dlq = nats.topology.js.get_stream(DLQ_STREAM).await.unwrap();
    let msg = dlq.get_raw_message(1).await.unwrap();
    assert_eq!(
        msg.subject.as_str(),
        format!("tars.dlq.notifier.{}", ids[0])
    );
    let h = &msg.headers;
    assert_eq!(
        h.get("Tars-Dlq-Reason").unwrap().as_str(),
        "tenant does not exist"
    );
    assert_eq!(h.get("Tars-Dlq-Worker").unwrap().as_str(), "notifier");
    assert_eq!(h.get("Tars-Dlq-Deliveries").unwrap().as_str(), "1");
    assert_eq!(
        h.get("Tars-Original-Subject").unwrap().as_str(),
        format!("tars.request.submitted.{}", ids[0])
    );
    assert_eq!(h.get("Tars-Original-Seq").unwrap().as_str(), "1");
    let original: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(original["request_id"], ids[0].as_str());
    assert_eq!(w.count("dead_letter"), 1);
    w.stop().await;
}

#[tokio::test]
async fn a_message_that_always_fails_is_dead_lettered_after_max_deliver() {
    let nats = Nats::start().await;
    let calls = Arc::new(Mutex::new(Vec::new()));
    let h = handler({
        let calls = calls.clone();
        move |d: Delivery| {
            calls.lock().unwrap().push((d.delivered, d.last_attempt));
            async { Outcome::retry("governance down") }
        }
    });
    let w = spawn_worker(&nats.topology, h, fast_config());
    publish_n(&nats, 1).await;
    eventually(LONG, "the dead letter", || async {
        (nats.stream_len(DLQ_STREAM).await == 1).then_some(())
    })
    .await;
    eventually(LONG, "consumer idle", || async {
        consumer_idle(&nats).await.then_some(())
    })
    .await;
    assert_eq!(
        *calls.lock().unwrap(),
        vec![(1, false), (2, false), (3, false), (4, true)]
    );
    let dlq = nats.topology.js.get_stream(DLQ_STREAM).await.unwrap();
    let msg = dlq.get_raw_message(1).await.unwrap();
    assert_eq!(
        msg.headers.get("Tars-Dlq-Deliveries").unwrap().as_str(),
        "4"
    );
    assert!(
        msg.headers
            .get("Tars-Dlq-Reason")
            .unwrap()
            .as_str()
            .contains("governance down")
    );
    w.stop().await;
}

#[tokio::test]
async fn unreadable_and_future_version_messages_are_left_for_a_process_that_can_read_them() {
    // During a rolling upgrade a newer version's event reaches an older replica: it is
    // handed back (delayed, counted), never dead-lettered or acknowledged away.
    let nats = Nats::start().await;
    let h = handler(|_d| async { Outcome::Ack });
    let w = spawn_worker(&nats.topology, h, fast_config());
    let js = &nats.topology.js;
    js.publish("tars.request.submitted.x1", "not json".into())
        .await
        .unwrap()
        .await
        .unwrap();
    js.publish(
        "tars.request.submitted.x2",
        r#"{"v":2,"type":"request.submitted"}"#.into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let unreadable = || {
        w.metrics
            .unreadable
            .with_label_values(&[NOTIFIER.name])
            .get()
    };
    // Each is handed back and delivered again (every 200 ms here), so one that can read
    // it will get it.
    eventually(LONG, "both handed back more than once", || async {
        (unreadable() >= 6).then_some(())
    })
    .await;
    assert_eq!(
        nats.stream_len(DLQ_STREAM).await,
        0,
        "nothing dead-lettered"
    );
    assert_eq!(w.count("ack"), 0, "nothing acknowledged away");
    w.stop().await;
    assert_eq!(
        tars_tests::consumer_backlog(&nats.topology.events, NOTIFIER.name).await,
        Some(2),
        "both still the consumer's to deliver"
    );
}

#[tokio::test]
async fn two_instances_split_a_thousand_messages_without_overlap_or_loss() {
    let nats = Nats::start().await;
    let in_flight: Arc<Mutex<HashSet<String>>> = Arc::default();
    let handled: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let overlaps = Arc::new(Mutex::new(0usize));
    let make = |who: usize, per: Arc<Mutex<[usize; 2]>>| {
        let (in_flight, handled, overlaps) = (in_flight.clone(), handled.clone(), overlaps.clone());
        handler(move |d: Delivery| {
            let id = d.envelope.request_id.to_string();
            let (in_flight, handled, overlaps, per) = (
                in_flight.clone(),
                handled.clone(),
                overlaps.clone(),
                per.clone(),
            );
            async move {
                if !in_flight.lock().unwrap().insert(id.clone()) {
                    *overlaps.lock().unwrap() += 1;
                }
                tokio::task::yield_now().await;
                *handled.lock().unwrap().entry(id.clone()).or_default() += 1;
                per.lock().unwrap()[who] += 1;
                in_flight.lock().unwrap().remove(&id);
                Outcome::Ack
            }
        })
    };
    let per = Arc::new(Mutex::new([0usize; 2]));
    let a = spawn_worker(&nats.topology, make(0, per.clone()), fast_config());
    let b = spawn_worker(&nats.topology, make(1, per.clone()), fast_config());
    let ids = publish_n(&nats, 1000).await;
    eventually(LONG, "1000 acks", || async {
        (a.count("ack") + b.count("ack") == 1000).then_some(())
    })
    .await;
    let handled = handled.lock().unwrap().clone();
    assert_eq!(handled.len(), 1000);
    assert!(
        ids.iter().all(|id| handled.get(id) == Some(&1)),
        "each handled once"
    );
    assert_eq!(*overlaps.lock().unwrap(), 0);
    let per = *per.lock().unwrap();
    assert!(
        per[0] > 0 && per[1] > 0,
        "both instances took work: {per:?}"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn shutdown_with_fifty_in_flight_loses_nothing() {
    let nats = Nats::start().await;
    let started = Arc::new(Mutex::new(0usize));
    let blocking = handler({
        let started = started.clone();
        move |_d| {
            *started.lock().unwrap() += 1;
            // Never finishes: shutdown must hand the message back.
            futures::future::pending::<Outcome>()
        }
    });
    let cfg = WorkerConfig {
        concurrency: 64,
        ..fast_config()
    };
    let w = spawn_worker(&nats.topology, blocking, cfg.clone());
    let ids = publish_n(&nats, 50).await;
    eventually(LONG, "50 in flight", || async {
        (*started.lock().unwrap() == 50).then_some(())
    })
    .await;
    w.stop().await;

    // A new instance gets every message straight away (nak-ed, not left to ack_wait).
    let handled: Arc<Mutex<HashSet<String>>> = Arc::default();
    let quick = handler({
        let handled = handled.clone();
        move |d: Delivery| {
            handled
                .lock()
                .unwrap()
                .insert(d.envelope.request_id.to_string());
            async { Outcome::Ack }
        }
    });
    let w2 = spawn_worker(&nats.topology, quick, cfg);
    eventually(
        Duration::from_secs(15),
        "all 50 handled after restart",
        || async { (handled.lock().unwrap().len() == 50).then_some(()) },
    )
    .await;
    assert!(ids.iter().all(|id| handled.lock().unwrap().contains(id)));
    w2.stop().await;
}

#[tokio::test]
async fn the_worker_resumes_by_itself_after_nats_is_killed_and_restarted() {
    let mut nats = Nats::start_with(TopologyConfig {
        ack_wait: Duration::from_secs(2),
        ..TopologyConfig::default()
    })
    .await;
    let handled: Arc<Mutex<HashSet<String>>> = Arc::default();
    let h = handler({
        let handled = handled.clone();
        move |d: Delivery| {
            let handled = handled.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(5)).await; // simulated work
                handled
                    .lock()
                    .unwrap()
                    .insert(d.envelope.request_id.to_string());
                Outcome::Ack
            }
        }
    });
    let w = spawn_worker(&nats.topology, h, fast_config());
    let ids = publish_n(&nats, 300).await;
    eventually(LONG, "some handled", || async {
        (handled.lock().unwrap().len() >= 30).then_some(())
    })
    .await;
    // SIGKILL, as a crash would; the store (fsync per write) keeps every acked message.
    nats.server.kill();
    nats.server.start_again().unwrap();
    eventually(
        Duration::from_secs(60),
        "all 300 handled after the restart",
        || async { (handled.lock().unwrap().len() == 300).then_some(()) },
    )
    .await;
    assert!(ids.iter().all(|id| handled.lock().unwrap().contains(id)));
    eventually(LONG, "consumer idle", || async {
        consumer_idle(&nats).await.then_some(())
    })
    .await;
    w.stop().await;
}

#[tokio::test]
async fn a_long_handler_keeps_its_message_with_in_progress_acks() {
    let nats = Nats::start_with(TopologyConfig {
        ack_wait: Duration::from_secs(1),
        ..TopologyConfig::default()
    })
    .await;
    let calls = Arc::new(Mutex::new(0));
    let h = handler({
        let calls = calls.clone();
        move |_d| {
            *calls.lock().unwrap() += 1;
            async {
                // The behaviour under test: a call that outlasts ack_wait 2.5 times.
                tokio::time::sleep(Duration::from_millis(2500)).await;
                Outcome::Ack
            }
        }
    });
    let w = spawn_worker(&nats.topology, h, fast_config());
    publish_n(&nats, 1).await;
    eventually(LONG, "the ack", || async {
        (w.count("ack") == 1).then_some(())
    })
    .await;
    eventually(LONG, "consumer idle", || async {
        consumer_idle(&nats).await.then_some(())
    })
    .await;
    assert_eq!(*calls.lock().unwrap(), 1, "never redelivered while running");
    let mut c: async_nats::jetstream::consumer::PullConsumer = nats
        .topology
        .events
        .get_consumer(NOTIFIER.name)
        .await
        .unwrap();
    assert_eq!(c.info().await.unwrap().num_redelivered, 0);
    w.stop().await;
}

#[tokio::test]
async fn worker_probes_serve_metrics_liveness_and_readiness() {
    let nats = Nats::start().await;
    let w = spawn_worker(
        &nats.topology,
        handler(|_d| async { Outcome::Ack }),
        fast_config(),
    );
    publish_n(&nats, 3).await;
    eventually(LONG, "three acks", || async {
        (w.count("ack") == 3).then_some(())
    })
    .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let client = tars_jetstream::nats::connect(&nats.server.url(), None, "probe")
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let probe = tars_observability::health::Probe {
        metrics: w.metrics.clone(),
        ready: tars_jetstream::nats::readiness(&client),
    };
    let served = tokio::spawn(tars_observability::health::serve(
        listener,
        probe,
        stop.clone(),
    ));
    let get = |path: &'static str| {
        let base = base.clone();
        async move {
            let r = reqwest::get(format!("{base}{path}")).await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    assert_eq!(get("/livez").await.0, 200);
    // The probe's client connects in the background; readiness follows the connection.
    eventually(LONG, "ready", || async {
        (get("/readyz").await.0 == 200).then_some(())
    })
    .await;
    let (status, text) = get("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        text.contains(r#"tars_worker_messages_total{outcome="ack",worker="notifier"} 3"#),
        "{text}"
    );
    assert!(text.contains("tars_worker_handle_duration_seconds_count"));
    assert!(text.contains(r#"tars_consumer_pending{worker="notifier"}"#));
    // The series alerts read are there before anything happened to them: a first dead
    // letter is an increase from 0, which `increase()` sees (from absent it does not).
    for series in [
        r#"tars_dead_letters_total{worker="notifier"} 0"#,
        r#"tars_worker_messages_total{outcome="dead_letter",worker="notifier"} 0"#,
        r#"tars_unreadable_total{consumer="notifier"} 0"#,
    ] {
        assert!(text.contains(series), "{series} missing from:\n{text}");
    }
    stop.cancel();
    served.await.unwrap().unwrap();
    w.stop().await;
}

#[tokio::test]
async fn a_worker_that_cannot_pull_is_not_ready_and_declares_its_consumer_again() {
    let nats = Nats::start().await;
    let h = handler(|_| async { Outcome::Ack });
    let cfg = fast_config();
    let health = cfg.health.clone();
    let w = spawn_worker(&nats.topology, h, cfg);
    publish_n(&nats, 2).await;
    eventually(LONG, "two acks", || async {
        (w.count("ack") == 2).then_some(())
    })
    .await;
    // The worker saves its consumer's position (its ack floor) as it goes.
    eventually(LONG, "the position saved", || async {
        tars_jetstream::topology::saved_position(&nats.topology.requests, NOTIFIER.name)
            .await
            .filter(|floor| *floor >= 2)
    })
    .await;
    // Idle pulls that simply expire are healthy.
    let idle_for = Instant::now();
    eventually(LONG, "a few idle pulls", || async {
        (idle_for.elapsed() > Duration::from_secs(2)).then_some(())
    })
    .await;
    assert_eq!(health.check(Duration::from_secs(1)), Ok(()));
    // The consumer vanishes: readiness fails, then the worker declares it again and work
    // goes on.
    nats.topology
        .events
        .delete_consumer(NOTIFIER.name)
        .await
        .unwrap();
    eventually(LONG, "not ready", || async {
        health.check(Duration::from_millis(500)).err()
    })
    .await;
    eventually(LONG, "the consumer declared again", || async {
        nats.topology
            .events
            .get_consumer::<async_nats::jetstream::consumer::pull::Config>(NOTIFIER.name)
            .await
            .ok()
    })
    .await;
    publish_n(&nats, 1).await;
    eventually(LONG, "ready and working again", || async {
        (health.check(Duration::from_millis(500)).is_ok() && w.count("ack") >= 3).then_some(())
    })
    .await;
    eventually(LONG, "consumer idle", || async {
        consumer_idle(&nats).await.then_some(())
    })
    .await;
    // Declared again, the consumer resumed after its saved position: the two handled
    // before were not handled again (from the stream's beginning they were).
    assert_eq!(w.count("ack"), 3, "resumed where it was, not replayed");
    w.stop().await;
}

#[tokio::test]
async fn a_worker_whose_consumer_does_not_exist_stops_at_once_naming_it() {
    let nats = Nats::start().await;
    nats.topology
        .events
        .delete_consumer(NOTIFIER.name)
        .await
        .unwrap();
    let h = handler(|_| async { Outcome::Ack });
    // A look-up that times out is tried again for ten seconds (the ride-out); one that
    // finds no consumer is an answer, not an outage, and ends the worker well inside that.
    let ended = tokio::time::timeout(
        Duration::from_secs(5),
        worker::run(
            NOTIFIER,
            nats.topology.clone(),
            h,
            fast_config(),
            Metrics::new(),
            CancellationToken::new(),
        ),
    )
    .await
    .expect("the worker ended within 5 s, before the ride-out's 10 s");
    let e = ended.expect_err("a worker without its consumer fails");
    assert!(
        e.to_string()
            .starts_with(&format!("consumer {}:", NOTIFIER.name)),
        "{e}"
    );
}

#[tokio::test]
async fn a_message_pulled_after_shutdown_began_is_handled_once_not_handed_back_in_a_loop() {
    let nats = Nats::start().await;
    let seen: Arc<Mutex<Vec<u64>>> = Arc::default();
    let h = handler({
        let seen = seen.clone();
        move |d: Delivery| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(d.delivered);
                Outcome::Ack
            }
        }
    });
    // A pull that stays open well past the shutdown, and a grace that outlasts it.
    let cfg = WorkerConfig {
        pull_expires: Duration::from_secs(3),
        shutdown_grace: Duration::from_secs(10),
        ..fast_config()
    };
    let w = spawn_worker(&nats.topology, h, cfg);
    let waiting = || async {
        let mut c: async_nats::jetstream::consumer::PullConsumer = nats
            .topology
            .events
            .get_consumer(NOTIFIER.name)
            .await
            .unwrap();
        c.info().await.unwrap().num_waiting
    };
    eventually(LONG, "the worker's pull open", || async {
        (waiting().await > 0).then_some(())
    })
    .await;
    // Shutdown begins; then a message arrives, into the pull still open. Handed back at
    // once, it would land in that same pull again (it has room) and burn a delivery each
    // time, up to the dead-letter limit.
    w.shutdown.cancel();
    publish_n(&nats, 1).await;
    w.task.await.unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![1], "deliveries the handler saw");
    assert!(consumer_idle(&nats).await, "the message is acked");
    assert_eq!(nats.stream_len(DLQ_STREAM).await, 0);
}

#[tokio::test]
async fn a_probe_that_stops_at_another_wait_lets_the_others_go_on() {
    // Every message meets an outage on its first two runs. The first to get past it
    // (the probe that found the dependency back) must then wait its turn until the
    // others are done: they may not wait for it behind a gate it left closed.
    let nats = Nats::start().await;
    let runs: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let first_past: Arc<std::sync::OnceLock<String>> = Arc::default();
    let others_acked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = handler(move |d: Delivery| {
        let (runs, first_past, others_acked) =
            (runs.clone(), first_past.clone(), others_acked.clone());
        async move {
            let id = d.envelope.request_id.to_string();
            let n = {
                let mut r = runs.lock().unwrap();
                let e = r.entry(id.clone()).or_default();
                *e += 1;
                *e
            };
            if n <= 2 {
                return Outcome::outage("slack", "connection refused");
            }
            if *first_past.get_or_init(|| id.clone()) == id {
                if others_acked.load(std::sync::atomic::Ordering::SeqCst) < 4 {
                    return Outcome::wait_turn(Duration::from_millis(50), "another holder");
                }
                return Outcome::Ack;
            }
            others_acked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Outcome::Ack
        }
    });
    let w = spawn_worker(&nats.topology, h, fast_config());
    publish_n(&nats, 5).await;
    eventually(LONG, "all five acked", || async {
        (w.count("ack") == 5).then_some(())
    })
    .await;
    assert_eq!(w.count("dead_letter"), 0);
    w.stop().await;
}
