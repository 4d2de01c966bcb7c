//! `weft events`: the store's changes streamed from a manager, printed as
//! `docker events` prints them (text, or one JSON object per line).

use std::time::{Duration, SystemTime};

use anyhow::bail;
use weft_proto::v1 as pb;

use crate::cli::EventsArgs;
use crate::commands::{Client, rpc};

const TYPES: [(&str, pb::EventType); 5] = [
    ("cluster", pb::EventType::Cluster),
    ("node", pb::EventType::Node),
    ("network", pb::EventType::Network),
    ("service", pb::EventType::Service),
    ("task", pb::EventType::Task),
];

const ACTIONS: [(&str, pb::EventAction); 5] = [
    ("create", pb::EventAction::Create),
    ("update", pb::EventAction::Update),
    ("remove", pb::EventAction::Remove),
    ("connect", pb::EventAction::Connect),
    ("disconnect", pb::EventAction::Disconnect),
];

fn words<T>(table: &[(&str, T)]) -> String {
    table.iter().map(|(w, _)| *w).collect::<Vec<_>>().join("|")
}

fn lookup<T: Copy>(table: &[(&str, T)], what: &str, v: &str) -> anyhow::Result<T> {
    match table.iter().find(|(w, _)| *w == v) {
        Some((_, t)) => Ok(*t),
        None => bail!("--filter {what}={v:?}: expected one of {}", words(table)),
    }
}

fn word<T: PartialEq>(table: &[(&'static str, T)], t: T) -> &'static str {
    table
        .iter()
        .find(|(_, x)| *x == t)
        .map_or("unknown", |(w, _)| w)
}

/// The request `a` asks for; a bad filter is an error before anything is
/// asked.
fn request(a: &EventsArgs) -> anyhow::Result<pb::EventsRequest> {
    let ms = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .max(1)
    };
    let mut r = pb::EventsRequest {
        since_index: a.since_index.unwrap_or(0),
        since_ms: a.since.map_or(0, ms),
        until_ms: a.until.map_or(0, ms),
        ..Default::default()
    };
    for f in &a.filter {
        let Some((k, v)) = f.split_once('=') else {
            bail!("--filter {f:?}: expected KEY=VALUE, such as type=service");
        };
        match k {
            "type" => r.types.push(lookup(&TYPES, k, v)? as i32),
            "event" => r.actions.push(lookup(&ACTIONS, k, v)? as i32),
            _ => {
                let Ok(t) = lookup(&TYPES[1..], k, k) else {
                    bail!(
                        "--filter {f:?}: unknown key {k:?}; keys: type, event, node, network, \
                         service, task"
                    );
                };
                if v.is_empty() {
                    bail!("--filter {f:?}: the {k} filter needs an ID or a name");
                }
                r.objects.push(pb::EventObject {
                    r#type: t as i32,
                    value: v.to_string(),
                });
            }
        }
    }
    Ok(r)
}

/// `weft events`.
pub async fn events(c: &Client, a: EventsArgs) -> anyhow::Result<()> {
    let json = match a.format.as_deref() {
        None => false,
        Some("json") => true,
        Some(f) => bail!("--format {f:?}: only json is supported for events"),
    };
    let mut stream = c
        .control()
        .events(request(&a)?)
        .await
        .map_err(rpc)?
        .into_inner();
    let mut last = None;
    loop {
        match stream.message().await {
            Ok(Some(batch)) => {
                for e in &batch.events {
                    println!("{}", if json { as_json(e) } else { as_text(e) });
                    last = Some(e.index);
                }
            }
            Ok(None) => return Ok(()),
            Err(s) => {
                let e = rpc(s);
                return Err(match last {
                    Some(i) => e.context(format!(
                        "the event stream ended after index {i}; `weft events --since-index {}` \
                         on any manager resumes it",
                        i + 1
                    )),
                    None => e,
                });
            }
        }
    }
}

fn time(e: &pb::StoreEvent) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(e.time_ms)
}

/// `2026-12-05T10:00:00.123Z service create ID (name=web)`.
fn as_text(e: &pb::StoreEvent) -> String {
    let when = if e.time_ms == 0 {
        "-".to_string()
    } else {
        weft_worker::logs::format::rfc3339(time(e))
    };
    let mut attrs: Vec<_> = e.attributes.iter().collect();
    attrs.sort();
    let attrs: Vec<String> = attrs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!(
        "{when} {} {} {} ({})",
        word(&TYPES, e.r#type()),
        word(&ACTIONS, e.action()),
        e.id,
        attrs.join(", ")
    )
}

/// Docker's event JSON (Type, Action, Actor, scope, time, timeNano) plus
/// the entry's Raft `Index`.
fn as_json(e: &pb::StoreEvent) -> String {
    let attrs: std::collections::BTreeMap<_, _> = e.attributes.iter().collect();
    serde_json::json!({
        "Type": word(&TYPES, e.r#type()),
        "Action": word(&ACTIONS, e.action()),
        "Actor": { "ID": e.id, "Attributes": attrs },
        "scope": "swarm",
        "time": e.time_ms / 1000,
        "timeNano": u128::from(e.time_ms) * 1_000_000,
        "Index": e.index,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(filter: &[&str]) -> EventsArgs {
        EventsArgs {
            since: None,
            until: None,
            since_index: None,
            filter: filter.iter().map(|s| s.to_string()).collect(),
            format: None,
        }
    }

    #[test]
    fn filters_become_typed_requests_and_bad_ones_say_why() {
        let r = request(&args(&["type=task", "event=remove", "service=web"])).unwrap();
        assert_eq!(r.types, [pb::EventType::Task as i32]);
        assert_eq!(r.actions, [pb::EventAction::Remove as i32]);
        assert_eq!(r.objects[0].value, "web");
        assert_eq!(r.objects[0].r#type, pb::EventType::Service as i32);
        for (bad, says) in [
            ("type=container", "expected one of cluster|node"),
            ("event=die", "expected one of create|update"),
            ("image=busybox", "unknown key \"image\""),
            ("cluster=x", "unknown key"),
            ("service=", "needs an ID or a name"),
            ("service", "expected KEY=VALUE"),
        ] {
            let e = request(&args(&[bad])).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn events_print_as_docker_prints_them() {
        let e = pb::StoreEvent {
            index: 42,
            time_ms: 1_700_000_000_123,
            r#type: pb::EventType::Service as i32,
            action: pb::EventAction::Create as i32,
            id: "s1".into(),
            attributes: [("name".to_string(), "web".to_string())].into(),
        };
        assert_eq!(
            as_text(&e),
            "2023-11-14T22:13:20.123Z service create s1 (name=web)"
        );
        let v: serde_json::Value = serde_json::from_str(&as_json(&e)).unwrap();
        assert_eq!(v["Actor"]["Attributes"]["name"], "web");
        assert_eq!(v["timeNano"], 1_700_000_000_123_000_000u64);
        assert_eq!(v["Index"], 42);
    }
}
