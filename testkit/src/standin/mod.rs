//! Stand-ins for the third-party HTTP services TARS talks to, speaking their real wire
//! formats, with fault injection and a call log: KBase auth (`/api/V2/me`), the Slack Web
//! API (`chat.postMessage`, `chat.update`, `views.open`, response URLs) and the governance
//! API (group membership). [`interact`] sends signed interactions the way Slack does.

pub mod faults;
pub mod governance;
pub mod interact;
pub mod kbase;
pub mod slack;

use std::net::SocketAddr;

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

/// Serves `router` on a free loopback port (or `port`).
pub async fn serve(router: axum::Router, port: u16) -> std::io::Result<Served> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok(Served { addr, task })
}
