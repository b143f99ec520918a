//! GetContainerEvents: a server stream of lifecycle events, each with the pod's status attached.

use berth_core::{EventKind, Lifecycle};
use tokio::sync::broadcast::error::RecvError;
use tonic::Status;

use crate::api::{ContainerEventResponse, ContainerEventType, PodSandboxStatusRequest};

pub type EventStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<ContainerEventResponse, Status>> + Send>>;

pub fn stream(lifecycle: Lifecycle) -> EventStream {
    let mut rx = lifecycle.events().subscribe();
    let s = async_stream(move |tx| async move {
        loop {
            let ev = match rx.recv().await {
                Ok(ev) => ev,
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!("an event subscriber fell {n} events behind");
                    continue;
                }
                Err(RecvError::Closed) => return,
            };
            let kind = match ev.kind {
                EventKind::ContainerCreated => ContainerEventType::ContainerCreatedEvent,
                EventKind::ContainerStarted => ContainerEventType::ContainerStartedEvent,
                EventKind::ContainerStopped => ContainerEventType::ContainerStoppedEvent,
                EventKind::ContainerDeleted => ContainerEventType::ContainerDeletedEvent,
            };
            let pod = crate::sandbox_status::status(
                &lifecycle,
                PodSandboxStatusRequest {
                    pod_sandbox_id: ev.pod_id.clone(),
                    verbose: false,
                },
            )
            .await
            .ok()
            .and_then(|r| r.status);
            let statuses = lifecycle
                .list_containers()
                .map(|cs| {
                    cs.iter()
                        .filter(|c| c.pod_id == ev.pod_id)
                        .map(crate::container_status::to_status)
                        .collect()
                })
                .unwrap_or_default();
            let resp = ContainerEventResponse {
                container_id: ev.container_id,
                container_event_type: kind as i32,
                created_at: ev.at,
                pod_sandbox_status: pod,
                containers_statuses: statuses,
            };
            if tx.send(Ok(resp)).await.is_err() {
                return;
            }
        }
    });
    Box::pin(s)
}

/// A stream fed by a task through a bounded channel; the task ends when the client goes away.
fn async_stream<T: Send + 'static, F, Fut>(f: F) -> impl futures::Stream<Item = T>
where
    F: FnOnce(tokio::sync::mpsc::Sender<T>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(f(tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
