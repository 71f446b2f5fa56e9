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

/// A served stand-in; the server task stops when this is dropped.
pub struct Served {
    /// Where it listens.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `router` at `addr` (port 0: a free one). Tests bind loopback; the
/// `tars-standins` container binds every interface so the services can reach it.
pub async fn serve(router: axum::Router, addr: SocketAddr) -> std::io::Result<Served> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok(Served { addr, task })
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
