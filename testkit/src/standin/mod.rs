//! Stand-ins for the third-party HTTP services TARS talks to, speaking their real wire
//! formats, with fault injection and a call log: KBase auth (`/api/V2/me`), the Slack Web
//! API (`chat.postMessage`, `chat.update`, `views.open`, response URLs) and the governance
//! API (group membership). [`interact`] sends signed interactions the way Slack does.

pub mod demo;
pub mod faults;
pub mod governance;
pub mod interact;
pub mod kbase;
pub mod slack;

use std::net::SocketAddr;
use std::time::Duration;

/// A served stand-in; the server task stops when this is dropped. It can go down (its
/// listener closed and its connections shut: callers meet "connection refused", as when
/// a service is down) and come back on the same address.
pub struct Served {
    /// Where it listens.
    pub addr: SocketAddr,
    router: axum::Router,
    running: std::sync::Mutex<Option<Running>>,
}

struct Running {
    task: tokio::task::JoinHandle<()>,
    stop: tokio_util::sync::CancellationToken,
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(r) = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            r.stop.cancel();
            r.task.abort();
        }
    }
}

fn spawn(listener: tokio::net::TcpListener, router: axum::Router) -> Running {
    let stop = tokio_util::sync::CancellationToken::new();
    let signal = stop.clone();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async move { signal.cancelled().await })
            .await;
    });
    Running { task, stop }
}

/// Serves `router` at `addr` (port 0: a free one). Tests bind loopback; the
/// `tars-standins` container binds every interface so the services can reach it.
pub async fn serve(router: axum::Router, addr: SocketAddr) -> std::io::Result<Served> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let running = spawn(listener, router.clone());
    Ok(Served {
        addr,
        router,
        running: std::sync::Mutex::new(Some(running)),
    })
}

impl Served {
    /// Goes down: the listener closes and open connections are shut (idle ones at once,
    /// busy ones once answered, else after a second), so every call meets a refused
    /// connection until [`Served::come_back`].
    pub async fn go_down(&self) {
        let running = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(r) = running {
            r.stop.cancel();
            let mut task = r.task;
            if tokio::time::timeout(Duration::from_secs(1), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
    }

    /// Comes back on the same address, with everything it had recorded. The old socket
    /// may linger a moment after going down: binding is tried again for up to 5 s.
    pub async fn come_back(&self) -> std::io::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if tokio::time::Instant::now() > deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let running = spawn(listener, self.router.clone());
        *self.running.lock().unwrap_or_else(|p| p.into_inner()) = Some(running);
        Ok(())
    }
}

/// The loopback address with `port`, where tests and `tars-dev` serve stand-ins.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Counts what a stand-in has recorded, so a waiter sleeps until something changed instead
/// of polling (a benchmark's polling loop would steal the CPU it measures).
#[derive(Debug)]
pub struct Changes(tokio::sync::watch::Sender<u64>);

impl Default for Changes {
    fn default() -> Self {
        Self(tokio::sync::watch::channel(0).0)
    }
}

impl Changes {
    /// Marks that the stand-in recorded something.
    pub fn bump(&self) {
        self.0.send_modify(|n| *n += 1);
    }

    /// Runs `check` now and after every change until it finds something; `None` once
    /// `timeout` has passed.
    pub async fn wait_for<T>(
        &self,
        timeout: Duration,
        mut check: impl FnMut() -> Option<T>,
    ) -> Option<T> {
        let mut seen = self.0.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            seen.borrow_and_update();
            if let Some(found) = check() {
                return Some(found);
            }
            match tokio::time::timeout_at(deadline, seen.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return check(),
                Err(_) => return None,
            }
        }
    }
}
