//! The periodic refresh of remote documents in the shim: the executor's
//! [`Refresher`] on a timer, its fetches sent by the [`Caller`].
//!
//! One process serves every stream, so the engine's [`Remote`] (kept across
//! reloads) is the shared copy, and its host is the process's memory. A
//! request that needs a fresher document waits and asks for it
//! (`Remote::want`); this task makes the fetch, so a stream that goes away
//! takes no fetch with it.
//!
//! [`Remote`]: policy_executor::Remote

use std::sync::Arc;
use std::time::{Duration, Instant};

use policy_executor::remote::attempt::RENEW_EVERY;
use policy_executor::Refresher;
use tokio::sync::mpsc;

use crate::callout::Caller;
use crate::store::ConfigStore;

/// How often the task looks for documents waiting requests asked for.
const WANTED_EVERY: Duration = Duration::from_millis(20);

/// Keeps the serving configuration's documents fresh, and fetches what
/// waiting requests need, for as long as the process runs. Fetches run
/// beside the timer, so the claims of slow ones are renewed while they are
/// in flight.
pub async fn keep_fresh(store: Arc<ConfigStore>, caller: Arc<Caller>) {
    let mut refresher = Refresher::default();
    let (answered, mut answers) = mpsc::unbounded_channel();
    let mut ticks = tokio::time::interval(WANTED_EVERY);
    let mut last_full = Instant::now();
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                let engine = store.current();
                if !engine.remote().is_wanted() && last_full.elapsed() < RENEW_EVERY {
                    continue;
                }
                last_full = Instant::now();
                for (source, call) in refresher.tick(engine.remote(), &engine.remote_sources()) {
                    let caller = Arc::clone(&caller);
                    let answered = answered.clone();
                    tokio::spawn(async move {
                        let answer = caller.call(call).await;
                        let _ = answered.send((source, answer));
                    });
                }
            }
            Some((source, answer)) = answers.recv() => {
                refresher.on_answer(store.current().remote(), &source, &answer);
            }
        }
    }
}
