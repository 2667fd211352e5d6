//! Rule evaluation cost against the size of the rule set.
//!
//! `cargo bench --bench evaluate`. Rule `i` is keyed on its own lead source, tag or stage
//! (in turn), as real rule sets are; the event matches a handful of them. With the index,
//! evaluation cost should stay flat from 10 to 10,000 rules; `explain` checks every rule and
//! shows the cost without the index.

use std::hint::black_box;

use autofollow::model::event::{self, Event, Parsed};
use autofollow::model::plan::PreviousState;
use autofollow::rules::{NoResolver, RuleSet};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

fn rule_set(n: usize) -> RuleSet {
    let mut yaml = String::from(
        "users:\n  alice: 9hTnVvSr1Q2ZyE5kHfXm\n  bob: 4kLmPq7Rt2WvXy9ZaBcD\nrules:\n",
    );
    for i in 0..n {
        let condition = match i % 3 {
            0 => format!("source: [\"Source {i}\", \"src-{i}\"]"),
            1 => format!("has_tag: tag-{i}\n      lacks_tag: [spam, test]"),
            _ => format!("stage_entered: Stage {i}"),
        };
        let action = if i % 2 == 0 {
            "add: [alice]"
        } else {
            "remove: [bob]"
        };
        yaml.push_str(&format!(
            "  - name: rule-{i}\n    events: [ContactCreate, ContactTagUpdate, OpportunityStageUpdate, Workflow]\n    when:\n      {condition}\n    {action}\n"
        ));
    }
    // A few rules every event must look at (wildcards cannot be indexed).
    yaml.push_str("  - name: wildcard\n    when: {source: 'fb-*'}\n    add: [bob]\n");
    RuleSet::from_sources(&[("bench.yaml", yaml)]).unwrap_or_else(|e| panic!("{e}"))
}

fn event() -> Event {
    let body = br#"{"type":"ContactTagUpdate","locationId":"ve9EPM428h8vShlRW1KT","id":"nmFmQEsNgz6AVpgLVUJ0",
        "source":"Source 3","tags":["tag-4","tag-7","webinar"],"assignedTo":"OwnerUserId000000001"}"#;
    match event::parse_app(body) {
        Ok(Parsed::Event(e)) => *e,
        other => panic!("{other:?}"),
    }
}

fn bench(c: &mut Criterion) {
    let e = event();
    let previous = PreviousState {
        tags: Some(vec!["webinar".into()]),
        ..PreviousState::default()
    };
    let mut group = c.benchmark_group("evaluate");
    for n in [10, 1_000, 10_000] {
        let set = rule_set(n);
        let decision = set.evaluate(&e, &previous, &NoResolver);
        assert!(
            !decision.plan.is_empty(),
            "the bench event must match some rules"
        );
        group.bench_with_input(BenchmarkId::new("indexed", n), &set, |b, set| {
            b.iter(|| set.evaluate(black_box(&e), black_box(&previous), &NoResolver))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("explain");
    group.sample_size(20);
    for n in [10, 1_000, 10_000] {
        let set = rule_set(n);
        group.bench_with_input(BenchmarkId::new("every_rule", n), &set, |b, set| {
            b.iter(|| set.explain(black_box(&e), black_box(&previous), &NoResolver))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("load");
    group.sample_size(10);
    group.bench_function(BenchmarkId::new("rules", 10_000), |b| {
        b.iter(|| rule_set(black_box(10_000)))
    });
    group.finish();

    let body = br#"{"type":"ContactCreate","locationId":"ve9EPM428h8vShlRW1KT","id":"nmFmQEsNgz6AVpgLVUJ0","source":"xyz form","tags":["a","b"]}"#;
    c.bench_function("parse/app_webhook", |b| {
        b.iter(|| event::parse_app(black_box(body)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
