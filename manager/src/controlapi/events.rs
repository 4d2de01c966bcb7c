//! `Control.Events`: the store's events (see `store::events`) streamed from
//! this manager's own [`EventLog`](crate::store::events::EventLog).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tonic::Status;
use weft_proto::v1 as pb;

use crate::error::{Error, Result};
use crate::limits;
use crate::raft::StoreHandle;
use crate::store::events::{Event, EventAction, EventType};

/// The stream of event batches to the client.
pub type EventStream =
    futures::stream::BoxStream<'static, std::result::Result<pb::EventBatch, Status>>;

/// Filters of one kind at most.
const MAX_FILTERS: usize = 64;
/// A filter's value at most, bytes.
const MAX_FILTER_VALUE_BYTES: usize = 256;
/// Events per message at most (a client resuming far back gets several).
const MAX_EVENTS_PER_BATCH: usize = 512;

/// Where a stream starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    Index(u64),
    Time(u64),
    Now,
}

/// A validated request.
#[derive(Debug)]
struct Query {
    start: Start,
    until_ms: Option<u64>,
    types: HashSet<EventType>,
    actions: HashSet<EventAction>,
    objects: Vec<(EventType, String)>,
}

impl Query {
    fn parse(r: &pb::EventsRequest) -> Result<Query> {
        limits::at_most("type filters", r.types.len(), MAX_FILTERS, "filters")?;
        limits::at_most("event filters", r.actions.len(), MAX_FILTERS, "filters")?;
        limits::at_most("object filters", r.objects.len(), MAX_FILTERS, "filters")?;
        let types = r
            .types
            .iter()
            .map(|t| event_type(*t))
            .collect::<Result<_>>()?;
        let actions = r
            .actions
            .iter()
            .map(|a| event_action(*a))
            .collect::<Result<_>>()?;
        let objects = r
            .objects
            .iter()
            .map(|o| {
                limits::at_most(
                    "filter value",
                    o.value.len(),
                    MAX_FILTER_VALUE_BYTES,
                    "bytes",
                )?;
                if o.value.is_empty() {
                    return Err(Error::InvalidInput("a filter needs a value".into()));
                }
                Ok((event_type(o.r#type)?, o.value.clone()))
            })
            .collect::<Result<_>>()?;
        let start = match (r.since_index, r.since_ms) {
            (0, 0) => Start::Now,
            (0, t) => Start::Time(t),
            (i, _) => Start::Index(i),
        };
        Ok(Query {
            start,
            until_ms: (r.until_ms > 0).then_some(r.until_ms),
            types,
            actions,
            objects,
        })
    }

    fn matches(&self, e: &Event) -> bool {
        (self.types.is_empty() || self.types.contains(&e.kind))
            && (self.actions.is_empty() || self.actions.contains(&e.action))
            && EventType::ALL.iter().all(|key| {
                let mut values = self.objects.iter().filter(|(k, _)| k == key).peekable();
                values.peek().is_none() || values.any(|(_, v)| Self::about(e, *key, v))
            })
    }

    /// Whether `e` is about the `kind` object `v` (its ID or name), or a
    /// task of that node or service.
    fn about(e: &Event, kind: EventType, v: &str) -> bool {
        let attr = |k: &str| e.attributes.get(k).is_some_and(|a| a == v);
        (kind == e.kind && (e.id == v || attr("name")))
            || (e.kind == EventType::Task
                && match kind {
                    EventType::Node => attr("node"),
                    EventType::Service => attr("service"),
                    _ => false,
                })
    }
}

fn event_type(t: i32) -> Result<EventType> {
    Ok(match pb::EventType::try_from(t) {
        Ok(pb::EventType::Cluster) => EventType::Cluster,
        Ok(pb::EventType::Node) => EventType::Node,
        Ok(pb::EventType::Network) => EventType::Network,
        Ok(pb::EventType::Service) => EventType::Service,
        Ok(pb::EventType::Task) => EventType::Task,
        _ => return Err(Error::InvalidInput(format!("unknown event type {t}"))),
    })
}

fn event_action(a: i32) -> Result<EventAction> {
    Ok(match pb::EventAction::try_from(a) {
        Ok(pb::EventAction::Create) => EventAction::Create,
        Ok(pb::EventAction::Update) => EventAction::Update,
        Ok(pb::EventAction::Remove) => EventAction::Remove,
        Ok(pb::EventAction::Connect) => EventAction::Connect,
        Ok(pb::EventAction::Disconnect) => EventAction::Disconnect,
        _ => return Err(Error::InvalidInput(format!("unknown event action {a}"))),
    })
}

fn wire(e: &Event) -> pb::StoreEvent {
    let kind = match e.kind {
        EventType::Cluster => pb::EventType::Cluster,
        EventType::Node => pb::EventType::Node,
        EventType::Network => pb::EventType::Network,
        EventType::Service => pb::EventType::Service,
        EventType::Task => pb::EventType::Task,
    };
    let action = match e.action {
        EventAction::Create => pb::EventAction::Create,
        EventAction::Update => pb::EventAction::Update,
        EventAction::Remove => pb::EventAction::Remove,
        EventAction::Connect => pb::EventAction::Connect,
        EventAction::Disconnect => pb::EventAction::Disconnect,
    };
    pb::StoreEvent {
        index: e.index,
        time_ms: e.time_ms,
        r#type: kind as i32,
        action: action as i32,
        id: e.id.clone(),
        attributes: e.attributes.clone().into_iter().collect(),
    }
}

fn gap(g: crate::store::events::Gap) -> Status {
    Status::data_loss(format!(
        "{g}; `weft events --since-index {}` starts from the oldest kept",
        g.kept_from
    ))
}

/// Opens a stream of `r`'s events from `store`: refused at once when the
/// request is bad or starts before what is kept.
pub fn open(store: StoreHandle, r: &pb::EventsRequest) -> Result<EventStream, Status> {
    use futures::StreamExt;
    let q = Query::parse(r).map_err(Status::from)?;
    let first = match q.start {
        Start::Index(i) => i,
        Start::Time(t) => store.events().first_at(t),
        Start::Now => store.applied_index() + 1,
    };
    store.events().since(first).map_err(gap)?;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(pump(store, q, first, tx));
    Ok(tokio_stream::wrappers::ReceiverStream::new(rx).boxed())
}

type Sender = tokio::sync::mpsc::Sender<std::result::Result<pb::EventBatch, Status>>;

/// Sends the events of entries from `next` on as they are applied, until
/// `until`, a gap (a client too slow for the log), or the client leaves.
async fn pump(store: StoreHandle, q: Query, mut next: u64, tx: Sender) {
    let mut applied = store.subscribe();
    loop {
        applied.borrow_and_update();
        let kept = store.events().since(next);
        let events: Vec<Arc<Event>> = match kept {
            Ok(e) => e,
            Err(g) => {
                let _ = tx.send(Err(gap(g))).await;
                return;
            }
        };
        if let Some(last) = events.last() {
            next = last.index + 1;
        }
        let past_until = |e: &Event| q.until_ms.is_some_and(|u| e.time_ms > u);
        let ended = events.iter().any(|e| past_until(e));
        let wanted: Vec<pb::StoreEvent> = events
            .iter()
            .filter(|e| !past_until(e) && q.matches(e))
            .map(|e| wire(e))
            .collect();
        for chunk in wanted.chunks(MAX_EVENTS_PER_BATCH) {
            let batch = pb::EventBatch {
                events: chunk.to_vec(),
            };
            if tx.send(Ok(batch)).await.is_err() {
                return;
            }
        }
        let left = q.until_ms.map(|u| u.saturating_sub(crate::core::now_ms()));
        if ended || left == Some(0) {
            return;
        }
        let until = tokio::time::sleep(left.map_or(Duration::MAX, Duration::from_millis));
        tokio::select! {
            changed = applied.changed() => if changed.is_err() { return },
            () = until => return,
            () = tx.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn event(kind: EventType, id: &str, attrs: &[(&str, &str)]) -> Event {
        Event {
            index: 1,
            time_ms: 0,
            kind,
            action: EventAction::Update,
            id: id.into(),
            attributes: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    fn query(objects: &[(pb::EventType, &str)], types: &[pb::EventType]) -> Query {
        Query::parse(&pb::EventsRequest {
            types: types.iter().map(|t| *t as i32).collect(),
            objects: objects
                .iter()
                .map(|(t, v)| pb::EventObject {
                    r#type: *t as i32,
                    value: v.to_string(),
                })
                .collect(),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn filters_match_objects_by_id_or_name_and_tasks_by_their_service_and_node() {
        let web = event(EventType::Service, "s1", &[("name", "web")]);
        let task = event(
            EventType::Task,
            "t1",
            &[("name", "web.1"), ("service", "web"), ("node", "w1")],
        );
        let net = event(EventType::Network, "n1", &[("name", "appnet")]);
        let by_service = query(&[(pb::EventType::Service, "web")], &[]);
        assert!(by_service.matches(&web) && by_service.matches(&task));
        assert!(!by_service.matches(&net));
        assert!(query(&[(pb::EventType::Service, "s1")], &[]).matches(&web));
        let by_node = query(&[(pb::EventType::Node, "w1")], &[]);
        assert!(by_node.matches(&task) && !by_node.matches(&web));
        let tasks_of_web = query(&[(pb::EventType::Service, "web")], &[pb::EventType::Task]);
        assert!(tasks_of_web.matches(&task) && !tasks_of_web.matches(&web));
        assert!(query(&[], &[]).matches(&net));
        // Different keys: all of them.
        let both = query(
            &[(pb::EventType::Node, "w1"), (pb::EventType::Service, "web")],
            &[],
        );
        assert!(both.matches(&task) && !both.matches(&web));
        let either = query(
            &[
                (pb::EventType::Service, "db"),
                (pb::EventType::Service, "web"),
            ],
            &[],
        );
        assert!(either.matches(&web));
    }

    #[test]
    fn bad_filters_are_refused() {
        for bad in [
            pb::EventsRequest {
                types: vec![0],
                ..Default::default()
            },
            pb::EventsRequest {
                actions: vec![99],
                ..Default::default()
            },
            pb::EventsRequest {
                types: vec![1; MAX_FILTERS + 1],
                ..Default::default()
            },
            pb::EventsRequest {
                objects: vec![pb::EventObject {
                    r#type: 2,
                    value: "x".repeat(MAX_FILTER_VALUE_BYTES + 1),
                }],
                ..Default::default()
            },
            pb::EventsRequest {
                objects: vec![pb::EventObject {
                    r#type: 2,
                    value: String::new(),
                }],
                ..Default::default()
            },
        ] {
            assert!(
                matches!(Query::parse(&bad), Err(Error::InvalidInput(_))),
                "{bad:?}"
            );
        }
    }
}
