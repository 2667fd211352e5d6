//! The Dockerfile and docker-compose.yml stay consistent with the repository (no Docker engine
//! runs in CI; the build stage's command is the one `.ci/run`'s tests already exercise).

use crate::common;
use std::process::Command;

use common::repo;

#[test]
fn every_file_the_dockerfile_copies_from_the_context_exists() {
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let mut copied = 0;
    for line in dockerfile
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from="))
    {
        let words: Vec<&str> = line.split_whitespace().skip(1).collect();
        for source in &words[..words.len() - 1] {
            assert!(
                repo().join(source).exists(),
                "Dockerfile copies missing {source}"
            );
            copied += 1;
        }
    }
    assert!(copied >= 5);
    assert!(dockerfile.contains("cargo build --release --locked --bin autofollow"));
    assert!(
        dockerfile.contains("USER autofollow"),
        "runs as a non-root user"
    );
    assert!(dockerfile.contains("EXPOSE 8080"));
    assert!(
        !dockerfile.contains("EXPOSE 9090"),
        "the admin port is not for publishing"
    );
    assert!(dockerfile.contains("AUTOFOLLOW_ADMIN_LISTEN=0.0.0.0:9090"));
    assert!(
        dockerfile.contains("chmod 700 /app/data"),
        "the data is private"
    );
    assert!(dockerfile.contains("HEALTHCHECK"));
}

/// What each compose service publishes, and where (SECURITY.md, "Deployment").
#[test]
fn the_compose_file_publishes_only_public_ports_and_the_admin_port_nowhere() {
    let compose = compose();
    let services = compose["services"].as_mapping().unwrap();
    let mut published = Vec::new();
    for (name, service) in services {
        for port in strings(&service["ports"]) {
            published.push(format!("{}={port}", name.as_str().unwrap()));
        }
    }
    assert_eq!(
        published,
        [
            "autofollow=127.0.0.1:8080:8080",
            "balancer=127.0.0.1:8080:8080",
            "tls=80:80",
            "tls=443:443"
        ],
        "only the webhook port, on loopback, and HTTPS in front of it"
    );
    let tls = &compose["services"]["tls"];
    assert_eq!(strings(&tls["profiles"]), ["tls"]);
    assert!(strings(&tls["volumes"]).contains(&"./deploy/Caddyfile.tls:/etc/caddy/Caddyfile:ro"));
}

/// The paths a Caddyfile passes on: its `@public path` matcher.
fn public_paths(file: &str) -> Vec<String> {
    let text = std::fs::read_to_string(repo().join(file)).unwrap();
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("@public path "))
        .unwrap_or_else(|| panic!("{file} has no @public matcher"));
    line.split_whitespace().skip(2).map(str::to_owned).collect()
}

#[test]
fn the_caddyfiles_pass_only_the_public_routes_and_are_valid() {
    for file in ["deploy/Caddyfile", "deploy/Caddyfile.tls"] {
        assert_eq!(
            public_paths(file),
            ["/webhooks/*", "/oauth/*", "/healthz", "/readyz"],
            "{file}"
        );
        if Command::new("caddy").arg("version").output().is_err() {
            eprintln!("caddy is not installed: {file} not adapted");
            continue;
        }
        let adapted = Command::new("caddy")
            .args(["adapt", "--adapter", "caddyfile", "--config"])
            .arg(repo().join(file))
            .env("AUTOFOLLOW_DOMAIN", "hooks.example.com")
            .output()
            .unwrap();
        assert!(
            adapted.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&adapted.stderr)
        );
    }
    // The README's production setup is that file.
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let tls = std::fs::read_to_string(repo().join("deploy/Caddyfile.tls")).unwrap();
    let site: String = tls
        .lines()
        .skip_while(|l| l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(readme.contains(&site), "README shows deploy/Caddyfile.tls");
}

/// docker-compose.yml with its `<<:` merge keys applied, as Compose reads it.
fn compose() -> serde_yaml::Value {
    let text = std::fs::read_to_string(repo().join("docker-compose.yml")).unwrap();
    let mut compose: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    compose.apply_merge().unwrap();
    compose
}

fn strings(value: &serde_yaml::Value) -> Vec<&str> {
    value
        .as_sequence()
        .map(|s| s.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default()
}

#[test]
fn the_compose_file_mounts_rules_read_only_and_keeps_data_in_a_volume() {
    let compose = compose();
    let service = &compose["services"]["autofollow"];
    let volumes = strings(&service["volumes"]);
    assert!(volumes.contains(&"./rules:/app/rules:ro"));
    assert!(volumes.contains(&"autofollow-data:/app/data"));
    assert!(
        compose["volumes"]["autofollow-data"].is_null()
            || compose["volumes"]["autofollow-data"].is_mapping()
    );
    assert_eq!(service["restart"].as_str(), Some("unless-stopped"));
    assert_eq!(
        service["healthcheck"]["test"][1].as_str(),
        Some("autofollow")
    );
    assert!(
        service["profiles"].is_null(),
        "`docker compose up` starts it"
    );
}

/// The replicas' database URL with the password's default filled in, as Compose does
/// without a POSTGRES_PASSWORD.
fn replica_database_url(compose: &serde_yaml::Value, replica: &str) -> String {
    compose["services"][replica]["environment"]["AUTOFOLLOW_DATABASE_URL"]
        .as_str()
        .unwrap()
        .replace("${POSTGRES_PASSWORD:-autofollow}", "autofollow")
}

/// The upstreams of `reverse_proxy` in deploy/Caddyfile.
fn caddy_upstreams() -> Vec<String> {
    let caddyfile = std::fs::read_to_string(repo().join("deploy/Caddyfile")).unwrap();
    let line = caddyfile
        .lines()
        .find(|l| l.trim_start().starts_with("reverse_proxy "))
        .unwrap();
    line.split_whitespace()
        .skip(1)
        .filter(|w| *w != "{")
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_replicas_profile_runs_postgresql_two_replicas_and_a_balancer() {
    let compose = compose();
    let services = compose["services"].as_mapping().unwrap();
    let in_profile: Vec<&str> = services
        .iter()
        .filter(|(_, s)| strings(&s["profiles"]) == ["replicas"])
        .map(|(name, _)| name.as_str().unwrap())
        .collect();
    assert_eq!(
        in_profile,
        ["postgres", "replica-1", "replica-2", "balancer"]
    );
    let postgres = &compose["services"]["postgres"];
    let single = &compose["services"]["autofollow"];
    for replica in ["replica-1", "replica-2"] {
        let r = &compose["services"][replica];
        assert_eq!(r["image"], single["image"]);
        assert_eq!(r["healthcheck"], single["healthcheck"]);
        assert_eq!(r["stop_grace_period"], single["stop_grace_period"]);
        assert_eq!(
            strings(&r["volumes"]),
            ["./rules:/app/rules:ro"],
            "the same rules, no SQLite volume"
        );
        assert_eq!(
            r["depends_on"]["postgres"]["condition"].as_str(),
            Some("service_healthy")
        );
        let url = replica_database_url(&compose, replica);
        let expected = format!(
            "postgres://{user}:autofollow@postgres:5432/{db}",
            user = postgres["environment"]["POSTGRES_USER"].as_str().unwrap(),
            db = postgres["environment"]["POSTGRES_DB"].as_str().unwrap()
        );
        assert_eq!(url, expected);
        assert!(
            postgres["environment"]["POSTGRES_PASSWORD"]
                .as_str()
                .unwrap()
                .contains("${POSTGRES_PASSWORD:-autofollow}")
        );
    }
    let balancer = &compose["services"]["balancer"];
    assert_eq!(strings(&balancer["ports"]), ["127.0.0.1:8080:8080"]);
    let mount = strings(&balancer["volumes"])[0];
    let caddyfile = mount.split(':').next().unwrap();
    assert!(repo().join(caddyfile).exists(), "{caddyfile}");
    assert_eq!(caddy_upstreams(), ["replica-1:8080", "replica-2:8080"]);
}

/// The README's migration commands name the compose file's services, the data file where the
/// image keeps it, and the URL the replicas use.
#[test]
fn the_readme_migration_commands_fit_the_compose_file() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let section = &readme[readme.find("### Moving from SQLite").unwrap()..];
    let block = &section[section.find("```sh\n").unwrap() + 6..];
    let block = &block[..block.find("```").unwrap()];
    let compose = compose();
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let mut migrated = false;
    for line in block.lines() {
        let command = line.split('#').next().unwrap().trim();
        let words: Vec<&str> = command.split_whitespace().collect();
        assert_eq!(words[..2], ["docker", "compose"], "{line}");
        let service = words
            .iter()
            .skip(2)
            .find(|w| !w.starts_with('-') && !["stop", "up", "run", "replicas"].contains(w))
            .unwrap();
        assert!(
            compose["services"][*service].is_mapping(),
            "{service} is not a compose service"
        );
        if words.contains(&"migrate") {
            migrated = true;
            assert_eq!(*service, "autofollow", "the service with the data volume");
            let at = |flag: &str| words[words.iter().position(|w| *w == flag).unwrap() + 1];
            assert!(
                dockerfile.contains(&format!("AUTOFOLLOW_DATABASE_URL={}", at("--from"))),
                "--from is the image's SQLite file"
            );
            assert_eq!(at("--to"), replica_database_url(&compose, "replica-1"));
        }
    }
    assert!(migrated);
    assert!(readme.contains("docker compose --profile replicas up --build balancer"));
}

#[test]
fn the_healthcheck_command_fails_when_nothing_listens() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let o = Command::new(env!("CARGO_BIN_EXE_autofollow"))
        .args([
            "healthcheck",
            "--url",
            &format!("http://127.0.0.1:{port}/healthz"),
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn every_test_file_holds_tests() {
    // A test file emptied by mistake would otherwise pass silently.
    let main = std::fs::read_to_string(repo().join("tests/it/main.rs")).unwrap();
    for entry in std::fs::read_dir(repo().join("tests/it"))
        .unwrap()
        .flatten()
    {
        let path = entry.path();
        let stem = path
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        if path.extension().is_some_and(|e| e == "rs") && stem != "main" {
            assert!(
                main.contains(&format!("mod {stem};")),
                "tests/it/main.rs leaves out {stem}"
            );
            let text = std::fs::read_to_string(&path).unwrap();
            let tests = text.matches("#[test]").count()
                + text.matches("#[tokio::test").count()
                + text.matches("proptest!").count();
            assert!(tests > 0, "{} holds no test", path.display());
        }
    }
}

/// A child process killed when the test ends, however it ends.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Webhooks the service at `base` accepted, from its metrics.
async fn accepted(base: &str) -> u64 {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("autofollow_webhooks_total{") && l.contains("\"accepted\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// deploy/Caddyfile, run by a real Caddy in front of two real services (when `caddy` is
/// installed; `.ci/test` installs it where it can): webhooks reach a replica that is up, and
/// when none is, the answer is the 429 GoHighLevel retries, never a 502 it would drop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_balancer_passes_webhooks_to_a_live_replica_and_answers_429_when_none_is() {
    if Command::new("caddy").arg("version").output().is_err() {
        eprintln!("caddy is not installed: skipped");
        return;
    }
    let dir = common::process::rules_dir("  - name: all\n    add: [alice]\n");
    let rules = dir.path().join("rules.yaml").display().to_string();
    let replica = |name: &str| {
        common::process::spawn(&[
            ("AUTOFOLLOW_RULES", rules.clone()),
            (
                "AUTOFOLLOW_DATABASE_URL",
                format!("sqlite://{}", dir.path().join(name).display()),
            ),
        ])
    };
    let mut replicas = vec![replica("one.db"), replica("two.db")];
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let upstreams: Vec<String> = replicas
        .iter()
        .map(|r| r.base.trim_start_matches("http://").to_owned())
        .collect();
    let caddyfile = std::fs::read_to_string(repo().join("deploy/Caddyfile"))
        .unwrap()
        .replace("replica-1:8080 replica-2:8080", &upstreams.join(" "))
        .replace(":8080 {", &format!("http://127.0.0.1:{port} {{"));
    // Caddy before the fix of caddyserver/caddy#7546 (2026) closes a POST's body when the
    // first replica refuses the connection, so the retry fails; buffering the body was the
    // workaround then. The compose file runs a current Caddy, which needs none.
    let version = String::from_utf8(
        Command::new("caddy")
            .arg("version")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let old = ["2.5.", "2.6."]
        .iter()
        .any(|v| version.trim_start_matches('v').starts_with(v));
    let caddyfile = if old {
        caddyfile.replace(
            "lb_try_duration 5s",
            "lb_try_duration 5s\n\t\tbuffer_requests",
        )
    } else {
        caddyfile
    };
    let config = dir.path().join("Caddyfile");
    std::fs::write(&config, caddyfile).unwrap();
    let _caddy = Killed(
        Command::new("caddy")
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let balancer = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !http
        .get(format!("{balancer}/healthz"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
    {
        assert!(std::time::Instant::now() < deadline, "caddy did not start");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let send = |contact: String| {
        let (http, balancer) = (http.clone(), balancer.clone());
        async move {
            let body =
                serde_json::json!({"type": "ContactCreate", "locationId": "L1", "id": contact});
            common::service::post_signed(&http, &balancer, &body).await
        }
    };
    for i in 0..6 {
        assert_eq!(send(format!("both-{i}")).await.status(), 200);
    }
    // Nothing but webhooks and health passes.
    for path in ["/metrics", "/admin/events", "/"] {
        let r = http.get(format!("{balancer}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
    assert_eq!(accepted(&replicas[0].admin).await, 3, "round robin");
    assert_eq!(accepted(&replicas[1].admin).await, 3, "round robin");

    let down = replicas.remove(0);
    drop(down); // SIGKILL
    for i in 0..6 {
        assert_eq!(
            send(format!("one-{i}")).await.status(),
            200,
            "retried on the live replica"
        );
    }
    assert_eq!(accepted(&replicas[0].admin).await, 9);

    drop(replicas);
    let r = send("none".into()).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "30");
}
