//! The web console in a real browser: headless Chromium driven over WebDriver (Debian's
//! `chromium` and `chromium-driver`, which `.ci/test` installs) against a running service
//! and a GoHighLevel stand-in, in one browser session: log in, see an accepted event and its
//! explanation, see a hostile body as text, find a dead letter and replay it (the stand-in
//! then receives the call), and use the explain playground. The same run saves screenshots
//! of the main pages (`AUTOFOLLOW_SCREENSHOTS=docs`: to `docs/console/`, which the README
//! shows).
//!
//! Without `chromedriver` on the PATH the test says it is skipped, unless
//! `AUTOFOLLOW_BROWSER_TESTS=required` (set by `.ci/test` once it installed the browser).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::common;
use autofollow::model::record::EventStatus;
use common::service::*;

const ADMIN: &str = "admin-test-token";
const RULES: &str = "rules:\n  - name: fb\n    when: {source: 'fb-*'}\n    add: [alice]\n";

/// `chromedriver` on a free port, stopped when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address").port()
}

/// Starts chromedriver, if there is one: `None` (and the test skipped) without it, unless
/// the browser tests are required.
async fn driver() -> Option<Driver> {
    let required = std::env::var("AUTOFOLLOW_BROWSER_TESTS").as_deref() == Ok("required");
    let port = free_port();
    let spawned = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let child = match spawned {
        Ok(child) => child,
        Err(e) if !required => {
            eprintln!("chromedriver cannot start ({e}): the browser test is skipped");
            return None;
        }
        Err(e) => panic!("chromedriver is required and cannot start: {e}"),
    };
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let started = Instant::now();
    while reqwest::get(format!("{}/status", driver.url))
        .await
        .is_err()
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "chromedriver did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Some(driver)
}

async fn browser(driver: &Driver) -> Client {
    let mut capabilities = serde_json::Map::new();
    let options = json!({"args": [
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--window-size=1280,1000", "--hide-scrollbars"
    ]});
    capabilities.insert("goog:chromeOptions".into(), options);
    // chromedriver listens on loopback over plain HTTP: no TLS to set up.
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a browser session")
}

/// Saves a screenshot of the page as `NAME.png`: in `target/console/`, or with
/// `AUTOFOLLOW_SCREENSHOTS=docs` in `docs/console/`, the README's.
async fn screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.expect("a screenshot");
    let docs = std::env::var("AUTOFOLLOW_SCREENSHOTS").as_deref() == Ok("docs");
    let dir = common::repo().join(if docs {
        "docs/console"
    } else {
        "target/console"
    });
    std::fs::create_dir_all(&dir).expect("docs/console");
    std::fs::write(dir.join(format!("{name}.png")), png).expect("the screenshot saved");
}

/// The text of the first element `css` selects, once it holds `expected` (a click's page
/// may still be loading): waits up to 10 seconds.
async fn until(client: &Client, css: &str, expected: &str) -> String {
    let started = Instant::now();
    loop {
        let found = match client.find(Locator::Css(css)).await {
            Ok(element) => element.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if found.contains(expected) || started.elapsed() > Duration::from_secs(10) {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A dead letter (GoHighLevel refuses its call once) and an event with markup in its body.
async fn history(app: &TestApp) -> (i64, i64) {
    app.ghl_refuses_the_first_post().await;
    app.ghl_accepts_the_rest().await;
    let dead = json!({"type": "ContactCreate", "locationId": "L1", "id": "c9", "source": "fb-x"});
    let dead = accepted(app.post_app(&dead).await).await;
    app.drain().await;
    let hostile = json!({"type": "ContactCreate", "locationId": "L1", "id": "c1",
        "source": "fb-ads", "firstName": "<script>alert(1)</script><b>bold</b>"});
    let hostile = accepted(app.post_app(&hostile).await).await;
    app.drain().await;
    assert_eq!(app.event(dead).await.status, EventStatus::Failed);
    (dead, hostile)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_logs_in_reads_an_event_replays_a_dead_letter_and_explains_a_body() {
    let Some(driver) = driver().await else {
        return;
    };
    let app = spawn_with(Options {
        rules: RULES.into(),
        admin_token: Some(ADMIN.into()),
        ..Options::default()
    })
    .await;
    let (dead, hostile) = history(&app).await;
    let client = browser(&driver).await;
    let console = app.admin.replace("127.0.0.1", "localhost");

    client
        .goto(&format!("{console}/"))
        .await
        .expect("the console");
    client
        .find(Locator::Css("#token"))
        .await
        .expect("the login form")
        .send_keys(ADMIN)
        .await
        .expect("typed");
    client
        .find(Locator::Css("form button"))
        .await
        .expect("log in")
        .click()
        .await
        .expect("clicked");
    assert_eq!(until(&client, "h1", "Overview").await, "Overview");
    screenshot(&client, "overview").await;

    client
        .goto(&format!("{console}/events"))
        .await
        .expect("events");
    screenshot(&client, "events").await;
    client
        .goto(&format!("{console}/events/{hostile}"))
        .await
        .expect("the event");
    let body = until(&client, "pre code", "<script>").await;
    assert!(
        body.contains("<script>alert(1)</script><b>bold</b>"),
        "shown as text: {body}"
    );
    let bold = client
        .find_all(Locator::Css("pre b"))
        .await
        .expect("a query");
    assert!(
        bold.is_empty(),
        "the body's markup is not markup on the page"
    );
    let why = until(&client, "section[aria-label=Explanation]", "add: alice").await;
    assert!(
        why.contains("rule fb") && why.contains("add: alice"),
        "{why}"
    );
    screenshot(&client, "event").await;

    client
        .goto(&format!("{console}/dead"))
        .await
        .expect("dead letters");
    screenshot(&client, "dead-letters").await;
    // The select-all box is shown by the console's script; it ticks the dead letter.
    let all = client.find(Locator::Css("#pick-all")).await;
    all.expect("select all").click().await.expect("ticked");
    let ticked = client.find(Locator::Css(&format!("#pick-{dead}"))).await;
    let checked = ticked.expect("its checkbox").prop("checked").await;
    assert_eq!(checked.expect("a property").as_deref(), Some("true"));
    client
        .find(Locator::Css("main form button"))
        .await
        .expect("replay")
        .click()
        .await
        .expect("asked");
    assert_eq!(until(&client, "h1", "Replay").await, "Replay 1 event?");
    client
        .find(Locator::Css("main form button"))
        .await
        .expect("confirm")
        .click()
        .await
        .expect("confirmed");
    let flash = until(&client, ".flash", "queued again").await;
    assert!(flash.starts_with("1 event queued again"), "{flash}");
    app.wait_for(dead, EventStatus::Done).await;
    let calls = app.followers_calls().await;
    assert!(
        calls
            .iter()
            .filter(|c| c.1 == "/contacts/c9/followers")
            .count()
            == 2,
        "{calls:?}"
    );

    client
        .goto(&format!("{console}/rules"))
        .await
        .expect("rules");
    let pasted =
        r#"{"type": "ContactCreate", "locationId": "L1", "id": "c2", "source": "fb-lead"}"#;
    client
        .find(Locator::Css("#body"))
        .await
        .expect("the playground")
        .send_keys(pasted)
        .await
        .expect("pasted");
    client
        .find(Locator::Css("#playground + form button"))
        .await
        .expect("explain")
        .click()
        .await
        .expect("explained");
    let why = until(&client, "section[aria-label=Explanation]", "Plan:").await;
    assert!(why.contains("Plan: add: alice"), "{why}");
    screenshot(&client, "rules").await;

    client.close().await.expect("the session closed");
    app.shutdown().await;
}
