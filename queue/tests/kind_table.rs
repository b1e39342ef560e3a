//! The kind table (`TaskKind::descriptor`) against the enum's own serde names, and each name
//! of a kind unique among the kinds.

use std::collections::HashSet;

use ragpool_queue::{TaskKind, default_queues};

#[test]
fn wire_names_are_the_serde_names_and_parse_back() {
    for kind in TaskKind::ALL {
        let d = kind.descriptor();
        assert_eq!(d.kind, kind);
        assert_eq!(serde_json::to_value(kind).unwrap(), d.name, "{kind:?}");
        assert_eq!(d.name.parse::<TaskKind>().unwrap(), kind);
        assert_eq!(kind.to_string(), d.name);
    }
    assert!("no_such_kind".parse::<TaskKind>().is_err());
}

/// A column of the table: its name and how to read it from a kind.
type Column = (&'static str, fn(TaskKind) -> &'static str);

#[test]
fn every_name_of_a_kind_is_unique() {
    let columns: [Column; 5] = [
        ("name", |k| k.descriptor().name),
        ("queue", |k| k.descriptor().queue),
        ("api_path", |k| k.descriptor().api_path),
        ("cli_word", |k| k.descriptor().cli_word),
        ("backend_path", |k| k.descriptor().backend_path),
    ];
    for (column, of) in columns {
        let mut seen = HashSet::new();
        for kind in TaskKind::ALL {
            assert!(
                seen.insert(of(kind)),
                "{column} {:?} is used twice",
                of(kind)
            );
        }
    }
}

#[test]
fn default_queues_are_the_kinds_queues_with_their_defaults() {
    let got: Vec<(String, u64, u32)> = default_queues()
        .into_iter()
        .map(|q| (q.name, q.timeout.as_secs(), q.weight))
        .collect();
    let want: Vec<(String, u64, u32)> = TaskKind::ALL
        .iter()
        .map(|k| {
            let d = k.descriptor();
            (d.queue.to_string(), d.timeout_secs, d.weight)
        })
        .collect();
    assert_eq!(got, want);
    assert_eq!(
        TaskKind::default_queue_list(),
        "image_analysis,answer_generation,full_query"
    );
}
