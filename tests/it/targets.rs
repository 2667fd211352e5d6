//! Targets taken from the event: `{ field: path }` and `{ table: name, key: path }` with the
//! top-level `tables:` section (issue 21). Each check also proves the indexed evaluation and
//! the full explain agree (see `common::plan_with`).

use crate::common;
use autofollow::model::ids::{LocationId, UserId};
use autofollow::model::plan::PreviousState;
use autofollow::rules::deal::Dealing;
use autofollow::rules::{NoResolver, Resolver, RuleSet};
use common::*;
use serde_json::json;

const TERRITORY: &str = "tables:
  territory:
    \"94*\": alice
    \"10*\": [bob, carol]
    SF: carol
    default: alice
";

fn territory(rule_tail: &str) -> RuleSet {
    rules(&format!(
        "{TERRITORY}rules:\n  - name: by-territory\n{rule_tail}"
    ))
}

fn with_postal_code(code: serde_json::Value) -> autofollow::model::event::Event {
    contact("ContactCreate", &[], json!({ "postalCode": code }))
}

/// The actions `explain` records for the first rule.
fn actions(set: &RuleSet, e: &autofollow::model::event::Event, r: &dyn Resolver) -> Vec<String> {
    let explained = set.explain(e, &PreviousState::default(), r);
    explained.rules[0].actions.clone()
}

#[test]
fn a_table_gives_the_first_entry_that_matches_ignoring_case_or_its_default() {
    let set = territory("    add: [{ table: territory, key: postalCode }]\n");
    let add = |code: serde_json::Value| plan(&set, &with_postal_code(code));
    assert_eq!(add(json!("94107")), "add: alice (table territory: 94*)");
    assert_eq!(
        add(json!("10001")),
        "add: bob (table territory: 10*), carol (table territory: 10*)"
    );
    assert_eq!(add(json!(" sf ")), "add: carol (table territory: SF)");
    assert_eq!(
        add(json!(10025)),
        "add: bob (table territory: 10*), carol (table territory: 10*)",
        "numbers compare as text"
    );
    assert_eq!(add(json!("60601")), "add: alice (table territory: default)");
    let none = contact("ContactCreate", &[], json!({}));
    assert_eq!(plan(&set, &none), "add: alice (table territory: default)");
}

#[test]
fn a_table_without_a_match_or_a_default_adds_nobody_and_says_why() {
    let set = rules(
        "tables:\n  t:\n    \"94*\": alice\nrules:\n  - name: r\n    add: [{ table: t, key: postalCode }]\n",
    );
    let e = with_postal_code(json!("10001"));
    assert_eq!(plan(&set, &e), "no change");
    assert_eq!(
        actions(&set, &e, &NoResolver),
        [
            "table t skipped: postalCode is \"10001\", which no entry matches, and the table has no default"
        ]
    );
}

/// Knows one user by email, as the service's users lookup would.
struct Directory;

impl Resolver for Directory {
    fn user_id_by_email(&self, _: &LocationId, email: &str) -> Option<UserId> {
        (email == "rita@example.com").then(|| UserId::parse("RitaRepUserId0000001").unwrap())
    }
}

#[test]
fn a_field_names_a_user_by_id_or_by_email() {
    let set = rules("rules:\n  - name: csm\n    add:\n      - field: customData.csm\n");
    let with = |csm: &str| {
        contact(
            "ContactCreate",
            &[],
            json!({ "customData": { "csm": csm } }),
        )
    };
    let by_id = with("CsmUserId00000000001");
    assert_eq!(
        plan(&set, &by_id),
        "add: CsmUserId00000000001 (field customData.csm)"
    );
    let by_email = with("rita@example.com");
    let found = plan_with(&set, &by_email, &PreviousState::default(), &Directory);
    assert_eq!(found, "add: RitaRepUserId0000001 (field customData.csm)");
    let skipped = [
        (
            with("nobody@example.com"),
            "no user id known for \"nobody@example.com\"",
        ),
        (
            with("not an id!"),
            "\"not an id!\" is neither a user id nor an email",
        ),
        (
            contact("ContactCreate", &[], json!({})),
            "the event has no value there",
        ),
    ];
    for (e, why) in skipped {
        let none = plan_with(&set, &e, &PreviousState::default(), &Directory);
        assert_eq!(none, "no change");
        let expected = format!("field customData.csm skipped: {why}");
        assert_eq!(actions(&set, &e, &Directory), [expected]);
    }
}

#[test]
fn a_field_reads_an_app_webhooks_custom_field_by_its_id() {
    let set =
        rules("rules:\n  - name: csm\n    add: [{ field: customFields.CsmFieldId0000000001 }]\n");
    let e = contact(
        "ContactCreate",
        &[],
        json!({ "customFields": [
            { "id": "OtherField0000000001", "value": "x" },
            { "id": "CsmFieldId0000000001", "value": "rita@example.com" }
        ]}),
    );
    assert_eq!(set.target_emails(&e), ["rita@example.com"]);
    let found = plan_with(&set, &e, &PreviousState::default(), &Directory);
    assert_eq!(
        found,
        "add: RitaRepUserId0000001 (field customFields.CsmFieldId0000000001)"
    );
}

#[test]
fn a_remove_through_a_table_or_a_field_removes_only_what_autofollow_added() {
    let set = territory(
        "    remove:\n      - { table: territory, key: postalCode }\n      - field: customData.csm\n",
    );
    let e = contact(
        "ContactCreate",
        &[],
        json!({ "postalCode": "94107", "customData": { "csm": "CsmUserId00000000001" } }),
    );
    let plan = set
        .evaluate(&e, &PreviousState::default(), &NoResolver)
        .plan;
    let removes: Vec<(String, bool)> = plan
        .remove
        .iter()
        .map(|r| (r.label.clone(), r.only_if_added))
        .collect();
    assert_eq!(
        removes,
        [
            ("alice (table territory: 94*)".to_owned(), true),
            (
                "CsmUserId00000000001 (field customData.csm)".to_owned(),
                true
            )
        ]
    );
}

/// `explain` shows a pool's members, weights and away periods, and the member it deals:
/// on a day one member is away, the other, saying who was skipped. Evaluating leaves the
/// pick to the service (it needs the store).
#[test]
fn explain_shows_the_member_a_pool_deals_and_who_was_away() {
    let set = rules(
        "pools:\n  sales:\n    members: { alice: 2, bob: 1 }\n    away: { alice: [\"2026-12-24\", \"2027-01-02\"] }\nrules:\n  - name: deal\n    add: [{ pool: sales }]\n",
    );
    let e = contact("ContactCreate", &[], json!({}));
    let on = |day: &str| {
        let mut dealing = Dealing {
            today: day.parse().unwrap(),
            ..Dealing::fresh()
        };
        let previous = PreviousState::default();
        let x = set.explain_dealt(&e, &previous, &NoResolver, &mut dealing);
        (x.rules[0].actions.clone(), x.plan.summary())
    };
    let describe = "add one member of pool sales (members alice 2, bob 1; alice away 2026-12-24 to 2027-01-02)";
    let (actions, plan) = on("2026-12-23");
    assert_eq!(
        actions,
        [
            describe.to_owned(),
            format!("add {ALICE} (pool sales: turn)")
        ]
    );
    assert!(plan.contains(ALICE), "{plan}");
    let (actions, plan) = on("2026-12-24");
    let bob = format!("add {BOB} (pool sales: turn; alice away)");
    assert_eq!(actions, [describe.to_owned(), bob]);
    assert!(plan.contains(BOB) && !plan.contains(ALICE), "{plan}");
    let evaluation = set.evaluate(&e, &PreviousState::default(), &NoResolver);
    assert_eq!(evaluation.picks.len(), 1);
    assert_eq!(evaluation.plan.summary(), "no change");
}

mod pools {
    use crate::common::service::*;
    use crate::common::{ALICE, BOB, CAROL};
    use autofollow::model::record::EventStatus;
    use serde_json::json;

    fn sales(extra: &str) -> String {
        format!(
            "pools:\n  sales:\n    members: {{ alice: 2, bob: 1 }}\n{extra}rules:\n  - name: deal\n    events: [ContactCreate, ContactUpdate]\n    add: [{{ pool: sales }}]\n"
        )
    }

    /// GoHighLevel's answer to an add: the list, and who was added.
    async fn ghl_adds(app: &TestApp) {
        use wiremock::matchers::method;
        use wiremock::{Mock, Request, ResponseTemplate};
        let answer = |req: &Request| {
            let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap_or_default();
            let users = &body["followers"];
            ResponseTemplate::new(201)
                .set_body_json(json!({"followers": users, "followersAdded": users}))
        };
        Mock::given(method("POST"))
            .respond_with(answer)
            .mount(&app.ghl)
            .await;
    }

    /// Sends a webhook of this type for each contact, processed one after the other.
    async fn create(app: &TestApp, kind: &str, contacts: impl IntoIterator<Item = String>) {
        for contact in contacts {
            let body = json!({"type": kind, "locationId": LOCATION, "id": contact});
            let id = accepted(app.post_app(&body).await).await;
            app.drain().await;
            assert_eq!(app.event(id).await.status, EventStatus::Done);
        }
    }

    /// Who each POST added, in order.
    async fn dealt(app: &TestApp) -> Vec<String> {
        let calls = app.followers_calls().await.into_iter();
        let posts = calls
            .filter(|(m, ..)| m == "POST")
            .map(|(_, _, users)| users[0].as_str().unwrap_or_default().to_owned());
        posts.collect()
    }

    /// 2:1 over 30 new contacts is exactly 20 and 10; sending the contacts again deals
    /// nothing new (each keeps its member) and takes no turn.
    #[tokio::test]
    async fn a_pool_deals_thirty_contacts_twenty_and_ten_and_keeps_each_pick() {
        let app = spawn_with(Options {
            rules: sales(""),
            ..Options::default()
        })
        .await;
        ghl_adds(&app).await;
        let contacts = || (0..30).map(|i| format!("c{i:02}"));
        create(&app, "ContactCreate", contacts()).await;
        let first = dealt(&app).await;
        assert_eq!(first[..3], [ALICE, BOB, ALICE]);
        assert_eq!(first.iter().filter(|u| *u == ALICE).count(), 20);
        assert_eq!(first.iter().filter(|u| *u == BOB).count(), 10);
        create(&app, "ContactUpdate", contacts()).await;
        let counted = [(BOB.to_owned(), 10), (ALICE.to_owned(), 20)];
        assert_eq!(handed(&app).await, counted, "sticky, no new turns");
        let mut per_contact = std::collections::HashMap::new();
        for (_, path, users) in app.followers_calls().await {
            per_contact.entry(path).or_insert_with(Vec::new).push(users);
        }
        assert_eq!(per_contact.len(), 30);
        assert!(
            per_contact.values().all(|u| u.iter().all(|x| *x == u[0])),
            "{per_contact:?}"
        );
        app.shutdown().await;
    }

    /// A member away today (in the file, or set at run time) gets nothing; with everyone
    /// away the fallback follows.
    #[tokio::test]
    async fn members_away_today_are_skipped_and_the_fallback_covers_everyone_away() {
        let today =
            chrono::DateTime::<chrono::Utc>::from(std::time::SystemTime::now()).date_naive();
        let away =
            format!("    away:\n      alice: [\"{today}\", \"{today}\"]\n    fallback: carol\n");
        let app = spawn_with(Options {
            rules: sales(&away),
            ..Options::default()
        })
        .await;
        ghl_adds(&app).await;
        create(&app, "ContactCreate", (0..3).map(|i| format!("a{i}"))).await;
        assert_eq!(dealt(&app).await, [BOB; 3]);
        let label = &app.decisions(1).await[0].plan.add[0].label;
        assert_eq!(label, &format!("{BOB} (pool sales: turn; alice away)"));
        let bob = autofollow::store::AwayPeriod {
            user: autofollow::model::ids::UserId::parse(BOB).unwrap(),
            from: today,
            to: today,
        };
        app.store().set_away(&bob).await.unwrap();
        create(&app, "ContactCreate", ["b0".to_owned()]).await;
        assert_eq!(dealt(&app).await[3..], [CAROL]);
        app.shutdown().await;
    }

    /// `reapply` re-evaluates while-matching rules: a pool's member kept following while its
    /// rule holds is not taken away, and no new turn is dealt.
    #[tokio::test]
    async fn reapply_keeps_a_pools_member_while_its_rule_holds() {
        let rules = "pools:\n  sales:\n    members: [alice, bob]\nrules:\n  - name: vip\n    when: { has_tag: vip }\n    follow: while_matching\n    add: [{ pool: sales }]\n";
        let app = spawn_with(Options {
            rules: rules.into(),
            admin_token: Some("admin-test-token".into()),
            ..Options::default()
        })
        .await;
        ghl_adds(&app).await;
        let body =
            json!({"type": "ContactCreate", "locationId": LOCATION, "id": "v1", "tags": ["vip"]});
        accepted(app.post_app(&body).await).await;
        app.drain().await;
        assert_eq!(dealt(&app).await, [ALICE]);
        let preview = reapply(&app, true).await;
        assert_eq!(preview["changed"], 0, "{preview:#}");
        let handed: u64 = handed(&app).await.iter().map(|(_, n)| n).sum();
        assert_eq!(handed, 1);
        app.shutdown().await;
    }

    /// Reapplies through the admin API; its report.
    async fn reapply(app: &TestApp, dry_run: bool) -> serde_json::Value {
        let url = format!("{}/admin/reapply?dry_run={dry_run}", app.admin);
        let answer = app
            .http
            .post(url)
            .bearer_auth("admin-test-token")
            .send()
            .await;
        answer.unwrap().json().await.unwrap()
    }

    /// The turns handed out, per member (by user id).
    async fn handed(app: &TestApp) -> Vec<(String, u64)> {
        let turns = app.store().pool_turns().await.unwrap().into_iter();
        turns.map(|t| (t.user.to_string(), t.handed)).collect()
    }

    /// A pool rule added later: `reapply` deals the contacts it now matches, 2:1. Its
    /// preview (on reload, and asked for) shows the same split and counts no turn; the run
    /// counts them.
    #[tokio::test]
    async fn reapply_deals_the_contacts_a_new_pool_rule_matches_and_its_preview_counts_nothing() {
        let app = spawn_with(Options {
            rules: "rules:\n  - name: none\n    when: { has_tag: never }\n    add: [carol]\n"
                .into(),
            admin_token: Some("admin-test-token".into()),
            ..Options::default()
        })
        .await;
        ghl_adds(&app).await;
        create(&app, "ContactCreate", (0..6).map(|i| format!("r{i}"))).await;
        assert!(dealt(&app).await.is_empty());
        let users = crate::common::USERS;
        std::fs::write(&app.rules_file, format!("{users}{}", sales(""))).unwrap();
        app.reload();
        let gains = |report: &serde_json::Value| {
            let summary = report["summary"].as_array().cloned().unwrap_or_default();
            let gain = |u: &str| {
                summary
                    .iter()
                    .find(|t| t["user"] == u)
                    .map(|t| t["gain"].clone())
            };
            (report["changed"].clone(), gain(ALICE), gain(BOB))
        };
        let preview = reapply(&app, true).await;
        assert_eq!(
            gains(&preview),
            (json!(6), Some(json!(4)), Some(json!(2))),
            "{preview:#}"
        );
        assert!(handed(&app).await.is_empty(), "a preview counts no turn");
        let run = reapply(&app, false).await;
        assert_eq!(run["queued"], 6, "{run:#}");
        app.drain().await;
        let dealt = dealt(&app).await;
        assert_eq!(dealt.iter().filter(|u| *u == ALICE).count(), 4, "{dealt:?}");
        assert_eq!(dealt.iter().filter(|u| *u == BOB).count(), 2, "{dealt:?}");
        assert_eq!(
            handed(&app).await,
            [(BOB.to_owned(), 2), (ALICE.to_owned(), 4)]
        );
        let again = reapply(&app, true).await;
        assert_eq!(
            again["changed"], 0,
            "each contact keeps its member: {again:#}"
        );
        app.shutdown().await;
    }

    /// `POST /admin/explain` deals as the service would now, counting nothing: a contact
    /// dealt already shows its member, a new one the pool's next turn in the store.
    #[tokio::test]
    async fn the_admin_explain_shows_the_stores_next_turn_and_a_contacts_member() {
        let app = spawn_with(Options {
            rules: sales(""),
            admin_token: Some("admin-test-token".into()),
            ..Options::default()
        })
        .await;
        ghl_adds(&app).await;
        create(&app, "ContactCreate", ["e0".to_owned()]).await;
        let explain = |contact: &str| {
            let body = json!({"type": "ContactCreate", "locationId": LOCATION, "id": contact});
            let url = format!("{}/admin/explain", app.admin);
            let request = app.http.post(url).bearer_auth("admin-test-token");
            async move {
                let answer = request.body(body.to_string()).send().await.unwrap();
                let answer: serde_json::Value = answer.json().await.unwrap();
                answer["rules"][0]["actions"][1].clone()
            }
        };
        assert_eq!(
            explain("e0").await,
            format!("add {ALICE} (pool sales: turn)")
        );
        assert_eq!(explain("e1").await, format!("add {BOB} (pool sales: turn)"));
        assert_eq!(explain("e1").await, format!("add {BOB} (pool sales: turn)"));
        let counted = [(BOB.to_owned(), 0), (ALICE.to_owned(), 1)];
        assert_eq!(handed(&app).await, counted, "explaining counts nothing");
        app.shutdown().await;
    }

    /// A dry run deals as the service would (2:1, each contact keeping its member) and counts
    /// no turn in the store.
    #[tokio::test]
    async fn a_dry_run_deals_without_counting_turns() {
        let app = spawn_with(Options {
            rules: sales(""),
            dry_run: Some(true),
            ..Options::default()
        })
        .await;
        let mut added = Vec::new();
        for contact in ["d0", "d1", "d2", "d0"] {
            let body = json!({"type": "ContactCreate", "locationId": LOCATION, "id": contact});
            let id = accepted(app.post_app(&body).await).await;
            app.drain().await;
            let decision = app.decisions(id).await.remove(0);
            added.push(decision.plan.add[0].user.to_string());
        }
        assert_eq!(added, [ALICE, BOB, ALICE, ALICE]);
        assert!(handed(&app).await.is_empty());
        assert!(app.followers_calls().await.is_empty());
        app.shutdown().await;
    }

    /// A time zone 12 or 14 hours from UTC that is on another day than UTC now, and its day.
    fn elsewhere() -> (chrono_tz::Tz, chrono::NaiveDate) {
        let now = chrono::DateTime::<chrono::Utc>::from(std::time::SystemTime::now());
        let zones = [chrono_tz::Etc::GMTPlus12, chrono_tz::Pacific::Kiritimati];
        let zone = zones
            .into_iter()
            .find(|z| now.with_timezone(z).date_naive() != now.date_naive())
            .expect("one of them is on another day");
        (zone, now.with_timezone(&zone).date_naive())
    }

    /// Away dates are days of AUTOFOLLOW_TIME_ZONE: a member away "today" where the clock is
    /// 12 or 14 hours from UTC (one of them is on another day than UTC now) is skipped only
    /// with that zone configured.
    #[tokio::test]
    async fn away_dates_are_days_of_the_configured_time_zone() {
        let (zone, there) = elsewhere();
        let away = format!("    away:\n      alice: [\"{there}\", \"{there}\"]\n");
        for (time_zone, expected) in [("UTC", ALICE), (zone.name(), BOB)] {
            let options = Options {
                rules: sales(&away),
                time_zone: time_zone.into(),
                ..Options::default()
            };
            let app = spawn_with(options).await;
            ghl_adds(&app).await;
            create(&app, "ContactCreate", ["z0".to_owned()]).await;
            assert_eq!(dealt(&app).await, [expected], "{time_zone}");
            app.shutdown().await;
        }
    }

    /// GET /locations/{id} calls the stand-in received.
    async fn location_reads(app: &TestApp) -> usize {
        let requests = app.ghl.received_requests().await.unwrap_or_default();
        let path = format!("/locations/{LOCATION}");
        requests.iter().filter(|r| r.url.path() == path).count()
    }

    /// By default away dates are days of the location's own time zone, read from
    /// GoHighLevel (once, kept) and only when the day decides who is away.
    #[tokio::test]
    async fn away_dates_are_days_of_the_locations_time_zone_read_only_when_they_matter() {
        use wiremock::matchers::{method, path};
        use wiremock::{Mock, ResponseTemplate};
        let (zone, there) = elsewhere();
        let far = there + chrono::Days::new(30);
        for (day, expected, reads) in [(there, BOB, 1), (far, ALICE, 0)] {
            let away = format!("    away:\n      alice: [\"{day}\", \"{day}\"]\n");
            let options = Options {
                rules: sales(&away),
                time_zone: "location".into(),
                ..Options::default()
            };
            let app = spawn_with(options).await;
            let location =
                json!({"location": {"id": LOCATION, "companyId": "Co1", "timezone": zone.name()}});
            Mock::given(method("GET"))
                .and(path(format!("/locations/{LOCATION}")))
                .respond_with(ResponseTemplate::new(200).set_body_json(location))
                .mount(&app.ghl)
                .await;
            ghl_adds(&app).await;
            create(&app, "ContactCreate", ["t0".to_owned(), "t1".to_owned()]).await;
            let dealt = dealt(&app).await;
            assert_eq!(
                dealt[0],
                expected,
                "away {day}, the location in {}",
                zone.name()
            );
            assert_eq!(location_reads(&app).await, reads, "away {day}");
            app.shutdown().await;
        }
    }
}
