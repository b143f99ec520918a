//! The event bus: lifecycle events fan out to every subscriber (CRI GetContainerEvents, tests).

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    ContainerCreated,
    ContainerStarted,
    ContainerStopped,
    ContainerDeleted,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    pub container_id: String,
    pub pod_id: String,
    /// Unix nanoseconds.
    pub at: i64,
}

/// A bounded broadcast channel: a slow subscriber loses old events (and is told how many), it never blocks
/// the lifecycle.
#[derive(Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Event>,
}

impl EventBus {
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        EventBus { tx }
    }

    pub fn publish(&self, event: Event) {
        // No subscriber is fine: events are not stored.
        let _ = self.tx.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus::new(1024)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_subscriber_sees_each_event() {
        let bus = EventBus::new(8);
        let mut a = bus.subscribe();
        let mut b = bus.subscribe();
        let ev = Event {
            kind: EventKind::ContainerStarted,
            container_id: "c".into(),
            pod_id: "p".into(),
            at: 1,
        };
        bus.publish(ev.clone());
        assert_eq!(a.recv().await.unwrap(), ev);
        assert_eq!(b.recv().await.unwrap(), ev);
    }
}
