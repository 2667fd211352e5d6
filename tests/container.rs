//! The Dockerfile and docker-compose.yml stay consistent with the repository (no Docker engine
//! runs in CI; the build stage's command is the one `.ci/run`'s tests already exercise).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on purpose

mod common;

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
    assert!(dockerfile.contains("HEALTHCHECK"));
}

#[test]
fn the_compose_file_mounts_rules_read_only_and_keeps_data_in_a_volume() {
    let text = std::fs::read_to_string(repo().join("docker-compose.yml")).unwrap();
    let compose: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let service = &compose["services"]["autofollow"];
    let volumes: Vec<&str> = service["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
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
    for entry in std::fs::read_dir(repo().join("tests")).unwrap().flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            let tests = text.matches("#[test]").count()
                + text.matches("#[tokio::test]").count()
                + text.matches("proptest!").count();
            assert!(tests > 0, "{} holds no test", path.display());
        }
    }
}
