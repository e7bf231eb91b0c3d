//! The shim's decision log: one line per request on standard output,
//! written by a thread of its own, so a slow reader of the output never
//! holds up a stream. Lines wait in a bounded queue; when it is full they
//! are dropped and counted (`policy_engine.decision_log.dropped`), never
//! waited for.

use std::io::Write as _;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::OnceLock;

use policy_executor::metrics::{metrics, PREFIX};

/// Lines that may wait for the writer.
const QUEUE: usize = 16_384;

/// Queues `line` for standard output.
pub fn write(line: String) {
    static WRITER: OnceLock<Option<SyncSender<String>>> = OnceLock::new();
    let writer = WRITER.get_or_init(|| {
        let (sender, lines) = sync_channel::<String>(QUEUE);
        let spawned = std::thread::Builder::new()
            .name("decision-log".into())
            .spawn(move || {
                let stdout = std::io::stdout();
                for line in lines {
                    let mut out = stdout.lock();
                    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                        return;
                    }
                }
            });
        match spawned {
            Ok(_) => Some(sender),
            Err(e) => {
                log::error!("cannot start the decision log writer: {e}");
                None
            }
        }
    });
    let sent = match writer {
        Some(sender) => sender.try_send(line),
        None => Err(TrySendError::Disconnected(line)),
    };
    if sent.is_err() {
        metrics()
            .counter(&format!("{PREFIX}.decision_log.dropped"))
            .increment();
    }
}
