//! Creates that outlive their client. RunPodSandbox and CreateContainer run in their own task, so a client
//! that gives up (its deadline, a dropped connection: tonic then drops the handler's future) drops only its
//! wait, never the work half-way. The work finishes, or fails and rolls back, as if the client had stayed.
//!
//! What a gone client never received is kept for its retry, as CRI-O's resource store does: kubelet retries a
//! create with the same name after its deadline, and that retry gets the object the first call made (waiting
//! for it when the first call still runs) instead of "name reserved" forever.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;
use tonic::Status;

/// A create's result: the new object's id.
type Outcome = Result<String, Status>;

enum Slot {
    /// The create still runs; each sender is a caller waiting for its outcome (the first one, then retries).
    Running(Vec<oneshot::Sender<Outcome>>),
    /// Done, every caller gone before the answer: the id waits for the retry.
    Unclaimed(String),
}

/// The creates in flight and the unclaimed results, by the name the caller asked for.
#[derive(Default)]
pub struct DetachedCreates {
    slots: Mutex<HashMap<String, Slot>>,
}

impl DetachedCreates {
    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `work` (the create of `key`) to completion in its own task and returns its outcome. A retry of a
    /// `key` still running waits for that run; a retry of one whose caller left gets its id, if `exists` says
    /// the object is still there (else the retry runs its own create).
    pub async fn run<W>(self: &Arc<Self>, key: String, exists: impl Fn(&str) -> bool, work: W) -> Outcome
    where
        W: Future<Output = Outcome> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut slots = self.slots();
            match slots.remove(&key) {
                Some(Slot::Running(mut waiters)) => {
                    tracing::info!(key, "a retry joins the create still running for this name");
                    waiters.push(tx);
                    slots.insert(key.clone(), Slot::Running(waiters));
                    false
                }
                Some(Slot::Unclaimed(id)) if exists(&id) => {
                    tracing::info!(key, id, "a retry gets the object its earlier call created");
                    return Ok(id);
                }
                _ => {
                    slots.insert(key.clone(), Slot::Running(vec![tx]));
                    true
                }
            }
        };
        if start {
            let this = self.clone();
            tokio::spawn(async move {
                let outcome = work.await;
                this.finish(key, outcome);
            });
        }
        rx.await
            .unwrap_or_else(|_| Err(Status::internal("the create task ended without an outcome")))
    }

    /// Hands the outcome to every caller still waiting; keeps a success nobody received for the retry.
    fn finish(&self, key: String, outcome: Outcome) {
        let mut slots = self.slots();
        let Some(Slot::Running(waiters)) = slots.remove(&key) else {
            return;
        };
        let mut delivered = false;
        for w in waiters {
            delivered |= w.send(outcome.clone()).is_ok();
        }
        if !delivered && let Ok(id) = outcome {
            tracing::info!(
                key,
                id,
                "the caller left before the create finished: kept for its retry"
            );
            slots.insert(key, Slot::Unclaimed(id));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_cancelled_create_finishes_and_its_retry_gets_the_result() {
        let gate = Arc::new(DetachedCreates::default());
        let (go_tx, go_rx) = oneshot::channel::<()>();
        let first = gate.run("k".into(), |_| true, async move {
            let _ = go_rx.await;
            Ok("id1".to_string())
        });
        // The caller gives up while the work runs.
        assert!(tokio::time::timeout(Duration::from_millis(20), first).await.is_err());
        // A retry while it still runs joins it.
        let g = gate.clone();
        let retry = tokio::spawn(async move { g.run("k".into(), |_| true, async { Ok("id2".into()) }).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        go_tx.send(()).unwrap();
        assert_eq!(retry.await.unwrap().unwrap(), "id1");
        // Delivered: the next call with the name runs its own create.
        assert_eq!(
            gate.run("k".into(), |_| true, async { Ok("id3".into()) })
                .await
                .unwrap(),
            "id3"
        );
    }

    #[tokio::test]
    async fn an_unclaimed_result_is_kept_only_while_its_object_exists() {
        let gate = Arc::new(DetachedCreates::default());
        let first = gate.run("k".into(), |_| true, async {
            tokio::time::sleep(Duration::from_millis(30)).await;
            Ok("id1".to_string())
        });
        assert!(tokio::time::timeout(Duration::from_millis(5), first).await.is_err());
        tokio::time::sleep(Duration::from_millis(60)).await;
        let retry = gate.run("k".into(), |id| id == "id1", async { Ok("id2".into()) });
        assert_eq!(retry.await.unwrap(), "id1");
        // Claimed once; and a failure is never kept.
        let gone = gate.run("k".into(), |_| false, async { Err(Status::not_found("x")) });
        assert_eq!(gone.await.unwrap_err().code(), tonic::Code::NotFound);
    }
}
