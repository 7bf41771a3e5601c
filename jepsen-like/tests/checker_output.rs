//! Fault windows, availability, latency, `results.json`, the summary, the
//! saved final state and the timeline picture.

use kv_jepsen::checker::{
    check, fault_windows, set_elements, set_value, Convergence, FinalRead, FinalState, KeyFinal,
    ReplicaFinal,
};
use kv_jepsen::history::{Event, OpKind, Outcome};
use kv_jepsen::{report, timeline};
use std::collections::BTreeMap;

fn nemesis(index: u64, time_ms: f64, fault: &str) -> Event {
    Event {
        index,
        time_ms,
        process: "nemesis".to_string(),
        fault: Some(fault.to_string()),
        outcome: Some(Outcome::Info),
        ..Event::default()
    }
}

/// Builds the invoke and the completion of one write of `value` to key `k1`.
fn write(
    op_id: u64,
    process: &str,
    value: &str,
    start: f64,
    end: f64,
    outcome: Outcome,
    phase: &str,
) -> [Event; 2] {
    let invoke = Event {
        time_ms: start,
        process: process.to_string(),
        op_id,
        outcome: Some(Outcome::Invoke),
        op: Some(OpKind::Write),
        key: Some("k1".to_string()),
        value: Some(value.to_string()),
        context_sent: Some(String::new()),
        covers: Some(Vec::new()),
        phase: Some(phase.to_string()),
        ..Event::default()
    };
    let completion = Event {
        time_ms: end,
        outcome: Some(outcome),
        error: (outcome != Outcome::Ok).then(|| "timed out <after 1 s>".to_string()),
        ..invoke.clone()
    };
    [invoke, completion]
}

/// Renumbers events in order.
fn numbered(events: Vec<Event>) -> Vec<Event> {
    events
        .into_iter()
        .enumerate()
        .map(|(index, event)| Event {
            index: index as u64,
            ..event
        })
        .collect()
}

/// Builds a run with two ok writes before a partition, one ok and one info
/// write during it, and one ok write after it. The final state lost "w2".
fn sample_history() -> Vec<Event> {
    let mut events = Vec::new();
    events.extend(write(1, "client-1", "w1", 0.0, 10.0, Outcome::Ok, "load"));
    events.extend(write(2, "client-2", "w2", 5.0, 25.0, Outcome::Ok, "load"));
    events.push(nemesis(0, 1_000.0, "partition halves [n1 n2] [n3 n4 n5]"));
    events.extend(write(
        3,
        "client-1",
        "w3",
        1_100.0,
        1_140.0,
        Outcome::Ok,
        "faults",
    ));
    events.extend(write(
        4,
        "client-2",
        "w4",
        1_200.0,
        2_200.0,
        Outcome::Info,
        "faults",
    ));
    events.push(nemesis(0, 3_000.0, "heal"));
    events.extend(write(
        5,
        "client-10",
        "w5",
        3_100.0,
        3_180.0,
        Outcome::Ok,
        "faults",
    ));
    numbered(events)
}

fn sample_final_state() -> FinalState {
    let mut replicas = BTreeMap::new();
    replicas.insert("n1".to_string(), ReplicaFinal::missing());
    let mut keys = BTreeMap::new();
    keys.insert(
        "k1".to_string(),
        KeyFinal {
            read: FinalRead::Values(vec!["w1".into(), "w3".into(), "w5".into()]),
            replicas,
        },
    );
    FinalState {
        keys,
        convergence: Convergence {
            converged: true,
            waited_ms: 350.0,
            deadline_ms: 30_000.0,
            converged_at_ms: Some(4_000.0),
        },
    }
}

#[test]
fn fault_windows_pair_start_and_stop() {
    let events = numbered(vec![
        nemesis(0, 100.0, "kill n3"),
        nemesis(0, 100.5, "kill n3"),
        nemesis(0, 200.0, "pause n2"),
        nemesis(0, 300.0, "restart n3"),
        nemesis(0, 400.0, "skew n1 +30s"),
        nemesis(0, 500.0, "skew n1 +0"),
        nemesis(0, 600.0, "partition bridge [n1 n2] [n3] [n4 n5]"),
        nemesis(0, 700.0, "snapshot taken"),
        nemesis(0, 800.0, "heal all"),
    ]);

    let windows = fault_windows(&events);

    let summary: Vec<(&str, f64, Option<f64>)> = windows
        .iter()
        .map(|window| (window.label.as_str(), window.start_ms, window.end_ms))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("kill n3", 100.0, Some(300.0)),
            ("pause n2", 200.0, Some(800.0)),
            ("skew n1 +30s", 400.0, Some(500.0)),
            ("partition bridge [n1 n2] [n3] [n4 n5]", 600.0, Some(800.0)),
        ]
    );
}

#[test]
fn fault_windows_pair_membership_changes() {
    let events = numbered(vec![
        nemesis(0, 100.0, "join n4"),
        nemesis(0, 200.0, "joined n4"),
        nemesis(0, 300.0, "decommission n2"),
        nemesis(0, 400.0, "left n2"),
        nemesis(0, 500.0, "remove n1"),
        nemesis(0, 600.0, "removed n3"),
        nemesis(0, 700.0, "heal all"),
    ]);

    let windows = fault_windows(&events);

    let summary: Vec<(&str, f64, Option<f64>)> = windows
        .iter()
        .map(|window| (window.label.as_str(), window.start_ms, window.end_ms))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("join n4", 100.0, Some(200.0)),
            ("decommission n2", 300.0, Some(400.0)),
            // `removed n3` names another node, so only `heal all` ends it.
            ("remove n1", 500.0, Some(700.0)),
        ]
    );
}

#[test]
fn fault_window_open_at_end() {
    let events = numbered(vec![nemesis(0, 100.0, "pause n4")]);

    let windows = fault_windows(&events);

    assert_eq!(windows.len(), 1);
    assert_eq!(windows[0].end_ms, None);
}

#[test]
fn availability_split_by_fault_window() {
    let verdicts = check(&sample_history(), &sample_final_state());
    let availability = &verdicts.availability;

    assert_eq!(availability.overall.completed, 5);
    assert_eq!(availability.overall.ok, 4);
    assert_eq!(availability.during_faults.completed, 2);
    assert_eq!(availability.during_faults.info, 1);
    assert_eq!(availability.during_faults.ok_share, Some(0.5));
    assert_eq!(availability.healthy.completed, 3);
    assert_eq!(availability.healthy.ok_share, Some(1.0));
    assert_eq!(availability.phases["load"].completed, 2);
    assert_eq!(availability.phases["faults"].completed, 3);

    let windows: Vec<(bool, u64)> = availability
        .windows
        .iter()
        .map(|window| (window.faulty, window.share.completed))
        .collect();
    assert_eq!(windows, vec![(false, 2), (true, 2), (false, 1)]);
    assert_eq!(
        availability.windows[1].label,
        "partition halves [n1 n2] [n3 n4 n5]"
    );
}

#[test]
fn latency_percentiles_per_kind() {
    let verdicts = check(&sample_history(), &sample_final_state());

    let write = &verdicts.latency["write"];
    assert_eq!(write.count, 5);
    // Latencies 10, 20, 40, 80 and 1000 ms; hdrhistogram keeps 3 digits.
    assert!((write.p50_ms - 40.0).abs() < 0.1, "p50 {}", write.p50_ms);
    assert!((write.p90_ms - 1000.0).abs() < 1.0, "p90 {}", write.p90_ms);
    assert!((write.max_ms - 1000.0).abs() < 1.0, "max {}", write.max_ms);
    assert!(!verdicts.latency.contains_key("read"));
}

#[test]
fn results_json_written_and_parsed() {
    let directory = tempfile::tempdir().expect("create a temporary folder");
    let verdicts = check(&sample_history(), &sample_final_state());

    let path = report::write(directory.path(), &verdicts, &serde_json::json!({"seed": 7}))
        .expect("write results");

    let text = std::fs::read_to_string(&path).expect("read results.json");
    let results: serde_json::Value = serde_json::from_str(&text).expect("results.json is JSON");
    assert_eq!(results["valid"], false);
    assert_eq!(results["verdict"], "invalid");
    assert_eq!(results["run"]["seed"], 7);
    assert_eq!(results["lost_writes"][0]["key"], "k1");
    assert_eq!(results["lost_writes"][0]["value"], "w2");
    assert_eq!(results["lost_writes"][0]["kind"], "lost_write");
    assert_eq!(results["latency"]["write"]["count"], 5);
    assert!(text.contains("\n  \"valid\": false"), "pretty-printed");
}

#[test]
fn summary_names_anomalies() {
    let verdicts = check(&sample_history(), &sample_final_state());

    let summary = report::summary(&verdicts);

    assert!(
        summary.starts_with("verdict: INVALID (1 anomalies"),
        "{summary}"
    );
    assert!(summary.contains("lost writes: 1"), "{summary}");
    assert!(summary.contains("\"w2\""), "{summary}");
    assert!(summary.contains("during faults"), "{summary}");
    assert!(summary.contains("write"), "{summary}");
}

#[test]
fn final_state_save_load_round_trip() {
    let directory = tempfile::tempdir().expect("create a temporary folder");
    let path = directory.path().join("final-state.json");
    let mut final_state = sample_final_state();
    let state = kv_cluster::version::State::new().encode();
    final_state
        .keys
        .get_mut("k1")
        .expect("sample has k1")
        .replicas
        .insert(
            "n2".to_string(),
            ReplicaFinal::from_state(state.clone()).expect("empty state decodes"),
        );
    final_state.keys.insert(
        "k2".to_string(),
        KeyFinal {
            read: FinalRead::Error("timed out".to_string()),
            replicas: BTreeMap::new(),
        },
    );

    final_state.save(&path).expect("save");
    let loaded = FinalState::load(&path).expect("load");

    assert_eq!(loaded, final_state);
    let text = std::fs::read_to_string(&path).expect("read back");
    assert!(
        text.contains("\"state\": \"AQAAAAAAAAAA\""),
        "state bytes as base64: {text}"
    );
    assert!(text.contains("\"error\": \"timed out\""), "{text}");
}

#[test]
fn final_state_load_rejects_invalid_json() {
    let directory = tempfile::tempdir().expect("create a temporary folder");
    let path = directory.path().join("final-state.json");
    std::fs::write(&path, "{\"keys\": 3}").expect("write");

    let error = FinalState::load(&path).expect_err("invalid JSON must be rejected");

    assert!(error.to_string().contains("final-state.json"), "{error}");
}

#[test]
fn set_value_round_trip() {
    let value = set_value(["b", "a", "b", ""]);

    assert_eq!(value, "a,b");
    assert_eq!(set_elements(&value), vec!["a".to_string(), "b".to_string()]);
    assert!(set_elements("").is_empty());
}

#[test]
fn timeline_svg_draws_lanes_and_faults() {
    let directory = tempfile::tempdir().expect("create a temporary folder");
    let path = directory.path().join("timeline.svg");
    let events = sample_history();

    timeline::write_svg(&path, &events).expect("write the timeline");

    let svg = std::fs::read_to_string(&path).expect("read the timeline");
    assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
    assert!(svg.trim_end().ends_with("</svg>"));
    // Lanes in numeric order: client-10 after client-2.
    let lane_1 = svg.find(">client-1<").expect("lane client-1");
    let lane_2 = svg.find(">client-2<").expect("lane client-2");
    let lane_10 = svg.find(">client-10<").expect("lane client-10");
    assert!(lane_1 < lane_2);
    assert!(lane_2 < lane_10);
    assert!(!svg.contains(">nemesis<"), "the nemesis gets no lane");
    assert!(svg.contains("partition halves [n1 n2] [n3 n4 n5]"));
    // Fault shading lies over the lane backgrounds, so every lane shows it.
    let lane_background = svg.find("fill=\"#f4f4f4\"").expect("lane background");
    let fault_shading = svg
        .find("fill=\"#7e57c2\" fill-opacity=\"0.15\"")
        .expect("fault shading");
    assert!(lane_background < fault_shading);
    // One bar and one latency point per operation, by outcome colour.
    assert_eq!(
        svg.matches("fill=\"#4caf50\" fill-opacity=\"0.9\"").count(),
        4
    );
    assert_eq!(
        svg.matches("fill=\"#fbc02d\" fill-opacity=\"0.9\"").count(),
        1
    );
    assert_eq!(svg.matches("<circle").count(), 5);
    // Error text is escaped.
    assert!(svg.contains("timed out &lt;after 1 s&gt;"));
    assert!(!svg.contains("<after"));
}
