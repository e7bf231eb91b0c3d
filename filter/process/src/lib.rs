//! The process conventions `policy-extproc` and `policy-ratelimit` share:
//! logging to standard error at a chosen level, binding the listening
//! address (port 0 picks one, and the caller prints which), and stopping on
//! SIGTERM or Ctrl-C.

use std::net::SocketAddr;

/// Logs at `level` and above to standard error, without module paths.
pub fn init_logging(level: log::LevelFilter) {
    env_logger::Builder::new()
        .filter_level(level)
        .format_target(false)
        .init();
}

/// Binds `addr`; the listener and the address it got (port 0 picks one).
pub async fn listen(addr: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr), String> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let address = listener
        .local_addr()
        .map_err(|e| format!("cannot read the listening address: {e}"))?;
    Ok((listener, address))
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn termination() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut sigterm) => {
            tokio::select! {
                _ = sigterm.recv() => {}
                _ = ctrl_c => {}
            }
        }
        Err(e) => {
            log::warn!("cannot watch SIGTERM ({e}); stopping on Ctrl-C only");
            let _ = ctrl_c.await;
        }
    }
}
