//! Every documented GoHighLevel webhook example parses into the event model.

use crate::common;
use autofollow::model::event::{self, AssignedUser, EventType, Parsed};
use autofollow::model::ids::{LocationId, UserId};
use common::{fixture, repo};

/// A workflow body's event.
fn workflow(body: &[u8]) -> autofollow::model::event::Event {
    match event::parse_workflow(body) {
        Ok(Parsed::Event(e)) => *e,
        other => panic!("not a workflow event: {other:?}"),
    }
}

fn parse_fixture(name: &str) -> Parsed {
    match event::parse_app(&fixture(&format!("app-webhooks/{name}.json"))) {
        Ok(p) => p,
        Err(e) => panic!("{name}: {e}"),
    }
}

#[test]
fn every_documented_contact_example_parses_with_the_contact_id_from_id() {
    for t in [
        "ContactCreate",
        "ContactUpdate",
        "ContactDelete",
        "ContactTagUpdate",
        "ContactDndUpdate",
    ] {
        let Parsed::Event(e) = parse_fixture(t) else {
            panic!("{t} is unsupported")
        };
        assert_eq!(e.event_type.name(), t);
        assert_eq!(e.location_id.as_str(), "ve9EPM428h8vShlRW1KT");
        assert_eq!(e.contact_id.as_str(), "nmFmQEsNgz6AVpgLVUJ0");
        assert_eq!(e.opportunity_id, None);
        assert_eq!(e.source.as_deref(), Some("xyz form"));
        assert_eq!(
            e.tags,
            Some(vec![
                "id magna sed Lorem".to_owned(),
                "Duis dolor commodo aliqua".to_owned()
            ])
        );
        assert_eq!(
            e.assigned_user,
            Some(AssignedUser::Id(
                autofollow::model::ids::UserId::parse("nmFmQEsNgz6AVpgLVUJ0").unwrap()
            ))
        );
        assert_eq!(e.stage_id, None);
        assert!(e.raw.get("customFields").is_some(), "raw payload kept");
    }
}

#[test]
fn every_documented_opportunity_example_parses_with_the_contact_id_from_contact_id() {
    for t in [
        "OpportunityCreate",
        "OpportunityUpdate",
        "OpportunityDelete",
        "OpportunityStageUpdate",
        "OpportunityStatusUpdate",
        "OpportunityAssignedToUpdate",
        "OpportunityMonetaryValueUpdate",
    ] {
        let Parsed::Event(e) = parse_fixture(t) else {
            panic!("{t} is unsupported")
        };
        assert_eq!(e.event_type.name(), t);
        assert!(e.event_type.is_opportunity());
        assert_eq!(e.contact_id.as_str(), "cJAWDskpkJHbRbhAT7bs");
        assert_eq!(
            e.opportunity_id.as_ref().map(|o| o.as_str()),
            Some("wWhVuzqpRuOA1ZVWi4FC")
        );
        assert_eq!(e.pipeline_id.as_deref(), Some("VDm7RPYC2GLUvdpKmBfC"));
        assert_eq!(
            e.stage_id.as_deref(),
            Some("e93ba61a-53b3-45e7-985a-c7732dbcdb69")
        );
        assert_eq!(e.stage_name, None, "app webhooks carry stage ids only");
        assert_eq!(e.status.as_deref(), Some("open"));
        assert_eq!(e.tags, None, "opportunity events do not describe tags");
        assert_eq!(
            e.assigned_user,
            Some(AssignedUser::Id(
                autofollow::model::ids::UserId::parse("bNl8QNGXhIQJLv8eeASQ").unwrap()
            ))
        );
    }
}

/// Appointments, tasks, notes and messages: each with its contact, and the assignee an
/// appointment (`appointment.assignedUserId`) or a task (`assignedTo`) names. They say
/// nothing about the contact's tags, source or owner. (The official examples of
/// `AppointmentUpdate` and `AppointmentDelete` are copies of `AppointmentCreate`'s, type
/// included.)
#[test]
fn every_documented_activity_example_parses_with_its_contact_and_assignee() {
    let user = |id: &str| Some(AssignedUser::Id(UserId::parse(id).unwrap()));
    for (name, t, contact, assignee) in [
        (
            "AppointmentCreate",
            "AppointmentCreate",
            "9NkT25Vor1v4aQatFsv2",
            user("YlWd2wuCAZQzh2cH1fVZ"),
        ),
        (
            "AppointmentUpdate",
            "AppointmentCreate",
            "9NkT25Vor1v4aQatFsv2",
            user("YlWd2wuCAZQzh2cH1fVZ"),
        ),
        (
            "AppointmentDelete",
            "AppointmentCreate",
            "9NkT25Vor1v4aQatFsv2",
            user("YlWd2wuCAZQzh2cH1fVZ"),
        ),
        (
            "TaskCreate",
            "TaskCreate",
            "CWBf1PR9LvvBkcYqiXlc",
            user("63e4qiWDsFJjOYAC8phG"),
        ),
        (
            "TaskComplete",
            "TaskComplete",
            "WFwVrSSjZ2CNHbZThQX2",
            user("bNl8QNGXhIQJLv8eeASQ"),
        ),
        (
            "TaskDelete",
            "TaskDelete",
            "CWBf1PR9LvvBkcYqiXlc",
            user("63e4qiWDsFJjOYAC8phG"),
        ),
        ("NoteCreate", "NoteCreate", "CWBf1PR9LvvBkcYqiXlc", None),
        ("NoteUpdate", "NoteUpdate", "CWBf1PR9LvvBkcYqiXlc", None),
        ("NoteDelete", "NoteDelete", "CWBf1PR9LvvBkcYqiXlc", None),
        (
            "InboundMessage",
            "InboundMessage",
            "cI08i1Bls3iTB9bKgFJh",
            None,
        ),
        (
            "OutboundMessage",
            "OutboundMessage",
            "cI08i1Bls3iTB9bKgFJh",
            None,
        ),
    ] {
        let Parsed::Event(e) = parse_fixture(name) else {
            panic!("{name} is unsupported")
        };
        assert_eq!(e.event_type.name(), t, "{name}");
        assert_eq!(e.contact_id.as_str(), contact, "{name}");
        assert_eq!(e.assigned_user, assignee, "{name}");
        assert_eq!((e.tags.as_ref(), e.source.as_ref()), (None, None), "{name}");
        assert_eq!(
            e.assignment(|_| None),
            None,
            "{name}: not the contact's owner"
        );
    }
}

#[test]
fn install_and_uninstall_examples_are_app_changes_and_user_examples_unsupported() {
    let change = |name: &str| match parse_fixture(name) {
        Parsed::App(c) => c,
        other => panic!("{name}: {other:?}"),
    };
    let location = LocationId::parse("otg8dTQqGLh3Q6iQI55w").ok();
    for name in ["AppInstall-1", "AppInstall-2"] {
        let c = change(name);
        assert!(c.installed, "{name}");
        assert_eq!(c.location_id, location, "{name}");
        assert_eq!(c.company_id.as_deref(), Some("otg8dTQqGLh3Q6iQI55w"));
        assert_eq!(c.app_id.as_deref(), Some("ve9EPM428h8vShlRW1KT"));
    }
    let agency = change("AppInstall-3");
    assert!(agency.installed && agency.location_id.is_none() && agency.company_id.is_some());
    let c = change("AppUninstall-1");
    assert!(!c.installed && c.location_id == location);
    let c = change("AppUninstall-2");
    assert!(!c.installed && c.location_id.is_none() && c.company_id.is_some());
    for name in ["UserCreate-1", "UserCreate-2"] {
        assert!(
            matches!(parse_fixture(name), Parsed::Unsupported { .. }),
            "{name} should be unsupported"
        );
    }
}

#[test]
fn fixtures_cover_every_app_event_type() {
    for t in EventType::ALL {
        if t == EventType::Workflow {
            continue;
        }
        let path = repo().join(format!("tests/fixtures/app-webhooks/{}.json", t.name()));
        assert!(path.exists(), "no fixture for {t}");
    }
}

/// The fixtures are copies of the official examples; when the docs are beside the repo
/// (as in CI), check they have not drifted. (The docs hold more event types than autofollow
/// keeps fixtures for; each fixture is compared with its example.)
#[test]
fn fixtures_match_the_official_examples_when_the_docs_are_present() {
    let docs = repo().join("../shared/ghl-spec/docs/webhook events");
    if !docs.is_dir() {
        return;
    }
    let fixtures = std::fs::read_dir(repo().join("tests/fixtures/app-webhooks")).unwrap();
    let mut compared = 0;
    for entry in fixtures.flatten() {
        let name = entry
            .path()
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .to_string();
        // `AppInstall-2` is the second example of AppInstall.md.
        let (stem, n) = match name.rsplit_once('-') {
            Some((stem, n)) if n.parse::<usize>().is_ok() => (stem.to_owned(), n.parse().unwrap()),
            _ => (name.clone(), 1),
        };
        let text = std::fs::read_to_string(docs.join(format!("{stem}.md"))).unwrap();
        let (_, examples) = text.split_once("#### Example").unwrap();
        let block = examples
            .split("```json\n")
            .skip(1)
            .filter_map(|b| b.split("```").next())
            .nth(n - 1)
            .unwrap_or_else(|| panic!("{name}: no such example in {stem}.md"));
        let doc: serde_json::Value = serde_json::from_str(block).expect("doc example is JSON");
        let ours: serde_json::Value =
            serde_json::from_slice(&std::fs::read(entry.path()).unwrap()).expect("fixture is JSON");
        assert_eq!(doc, ours, "{name} differs from the official example");
        compared += 1;
    }
    assert_eq!(compared, 30);
}

#[test]
fn workflow_capture_parses() {
    let e = workflow(&fixture("workflow-webhooks/tag-added.json"));
    assert_eq!(e.event_type, EventType::Workflow);
    assert_eq!(e.location_id.as_str(), "t9Ww7bY1xJJ6ThFHZVPC");
    assert_eq!(e.contact_id.as_str(), "gxGfB9wxEy3anxbHB4nT");
    assert_eq!(e.tags, Some(vec!["webinar".to_owned()]));
    assert_eq!(
        e.workflow_id.as_deref(),
        Some("d325be72-ae1d-490a-b6e7-62b404ecd35b")
    );
    assert_eq!(
        e.workflow_name.as_deref(),
        Some("New Workflow : 1785854951058")
    );
    assert_eq!(
        e.opportunity_id, None,
        "a contact trigger has no opportunity"
    );
    assert_eq!(e.assigned_user, None);
}

#[test]
fn workflow_opportunity_body_parses() {
    let e = workflow(&fixture("workflow-webhooks/opportunity-stage.json"));
    assert_eq!(
        e.opportunity_id.as_ref().map(|o| o.as_str()),
        Some("wWhVuzqpRuOA1ZVWi4FC")
    );
    assert_eq!(e.tags, Some(vec!["vip".to_owned(), "webinar".to_owned()]));
    assert_eq!(e.source.as_deref(), Some("Facebook Ads"));
    assert_eq!(e.pipeline_name.as_deref(), Some("Sales"));
    assert_eq!(e.stage_name.as_deref(), Some("Proposal"));
    assert_eq!(e.stage_id, None);
    assert_eq!(e.status.as_deref(), Some("open"));
    assert_eq!(
        e.assigned_user,
        Some(AssignedUser::Email("rita@example.com".to_owned()))
    );
}
