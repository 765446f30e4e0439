//! `cloudctl up` driven as a real child process: both services become ready, answer `/healthz`,
//! and Ctrl-C (SIGINT) stops everything cleanly with exit code 0.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

#[tokio::test]
async fn up_starts_both_services_and_stops_on_ctrl_c() {
    let data = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cloudctl"))
        .args([
            "up",
            "--gateway-port",
            "0",
            "--gateway-admin-port",
            "0",
            "--identity-port",
            "0",
            "--identity-admin-port",
            "0",
        ])
        .arg("--data-dir")
        .arg(data.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });

    // One progress line per service, then the URLs.
    let mut admin_urls = Vec::new();
    let mut transcript = Vec::new();
    while admin_urls.len() < 2 {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no readiness lines; got {transcript:#?}"));
        transcript.push(line.clone());
        if line.contains(" ready in ") {
            let admin = line
                .rsplit("(admin ")
                .next()
                .unwrap()
                .trim_end_matches(')')
                .to_string();
            admin_urls.push(admin);
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "both services ready within 10 s of start: {transcript:#?}"
    );
    assert!(
        transcript
            .iter()
            .any(|l| l.starts_with("cloud-identity-access") && l.contains("starting")),
        "{transcript:#?}"
    );
    assert!(
        transcript
            .iter()
            .any(|l| l.starts_with("cloud-api-gateway-bff") && l.contains("ready in")),
        "{transcript:#?}"
    );
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(5)) {
        let done = line.contains("Ctrl-C");
        transcript.push(line);
        if done {
            break;
        }
    }
    assert!(
        transcript.iter().any(|l| l.contains("curl")),
        "prints a curl example: {transcript:#?}"
    );

    let client = reqwest::Client::new();
    for admin in &admin_urls {
        let health = client.get(format!("{admin}/healthz")).send().await.unwrap();
        assert_eq!(health.status(), 200, "{admin}/healthz");
    }

    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let stopping = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            stopping.elapsed() < Duration::from_secs(5),
            "cloudctl up did not exit within 5 s of Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status after Ctrl-C: {status}");
    for admin in &admin_urls {
        assert!(
            client.get(format!("{admin}/healthz")).send().await.is_err(),
            "{admin} still answers after exit"
        );
    }
}
