//! `assemble` end to end against a local HTTP server (127.0.0.1 only) that
//! serves real images under the Flickr paths of the real CSV's selection,
//! with injected latency, 404s, 500s that recover, truncated bodies, stalls,
//! placeholder redirects and bodies, and non-image bodies.
mod common;
use common::http::{Reply, Server};
use common::{bin, caffe_ref, fixture};
use flickr_style::pipeline::assemble::image_name;
use flickr_style::pipeline::flickr_csv::{read_csv, select, StyleRow};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn csv() -> String {
    caffe_ref()
        .join("flickr_style/flickr_style.csv.gz")
        .to_string_lossy()
        .into_owned()
}

fn selection(n: i64) -> Vec<StyleRow> {
    select(&read_csv(Path::new(&csv())).unwrap(), 831486, n, 0)
}

fn url_path(url: &str) -> String {
    let rest = url.split_once("://").unwrap().1;
    rest[rest.find('/').unwrap()..].to_string()
}

fn fixture_bodies() -> Vec<Vec<u8>> {
    std::fs::read_to_string(fixture("images/list.txt"))
        .unwrap()
        .lines()
        .map(|l| std::fs::read(fixture("images").join(l.rsplit_once(' ').unwrap().0)).unwrap())
        .collect()
}

/// Runs the binary with a hang guard: killed (and the test failed) after `limit`.
fn run_bounded(cwd: &Path, args: &[&str], limit: Duration) -> (i32, String) {
    let mut child = Command::new(bin())
        .args(args)
        .current_dir(cwd)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            return (status.code().unwrap_or(-1), err);
        }
        if start.elapsed() > limit {
            child.kill().unwrap();
            panic!("assemble did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn lists(out: &Path) -> (Vec<String>, Vec<String>) {
    let read = |n: &str| -> Vec<String> {
        std::fs::read_to_string(out.join(n))
            .unwrap()
            .lines()
            .map(|l| {
                let (p, label) = l.rsplit_once(' ').unwrap();
                assert!(Path::new(p).is_absolute(), "{p}");
                format!(
                    "{} {label}",
                    Path::new(p).file_name().unwrap().to_string_lossy()
                )
            })
            .collect()
    };
    (read("train.txt"), read("test.txt"))
}

fn base_args<'a>(server: &'a Server, out: &'a str, n: &'a str) -> Vec<&'a str> {
    vec![
        "assemble",
        "--images",
        n,
        "--seed",
        "831486",
        "--out",
        out,
        "--mirror",
        &server.base,
        "--timeout",
        "3",
        "--read-timeout",
        "1",
        "--connect-timeout",
        "1",
        "--backoff",
        "0.05",
        "--attempts",
        "3",
    ]
}

#[test]
fn faults_are_recovered_or_reported_and_nothing_bad_is_kept() {
    let rows = selection(30);
    let bodies = fixture_bodies();
    let server = Server::start();
    let placeholder_body = b"GIF89a fake placeholder".to_vec();
    let placeholder_sha1 = hex::encode(<sha1::Sha1 as sha1::Digest>::digest(&placeholder_body));
    let mut expect_missing = std::collections::HashMap::new();
    for (i, r) in rows.iter().enumerate() {
        let path = url_path(&r.image_url);
        let body = bodies[i % bodies.len()].clone();
        let script = match i {
            0 => {
                expect_missing.insert(r.id.clone(), "not_found");
                vec![Reply::status(404)]
            }
            1 => vec![Reply::status(500), Reply::status(503), Reply::ok(body)],
            2 => vec![
                Reply {
                    truncate_at: Some(100),
                    ..Reply::ok(body.clone())
                },
                Reply::ok(body),
            ],
            3 => vec![
                Reply {
                    stall: Some(Duration::from_secs(5)),
                    ..Reply::ok(body.clone())
                },
                Reply::ok(body),
            ],
            4 => {
                expect_missing.insert(r.id.clone(), "placeholder");
                vec![Reply::redirect("/images/photo_unavailable.png")]
            }
            5 => {
                expect_missing.insert(r.id.clone(), "placeholder");
                vec![Reply::ok(placeholder_body.clone())]
            }
            6 => {
                expect_missing.insert(r.id.clone(), "undecodable");
                vec![Reply::ok(b"<html>gone</html>".to_vec())]
            }
            7 => {
                expect_missing.insert(r.id.clone(), "undecodable");
                vec![Reply::ok(body[..body.len() / 2].to_vec())]
            }
            8 => {
                expect_missing.insert(r.id.clone(), "timeout");
                vec![Reply {
                    stall: Some(Duration::from_secs(5)),
                    ..Reply::ok(body)
                }]
            }
            9 => {
                expect_missing.insert(r.id.clone(), "http_status");
                vec![Reply::status(500)]
            }
            10 => vec![
                {
                    let mut r = Reply::status(429);
                    r.headers.push(("Retry-After".into(), "0".into()));
                    r
                },
                Reply::ok(body),
            ],
            _ => vec![Reply::ok(body).delayed(Duration::from_millis(50))],
        };
        server.route(&path, script);
    }
    server.route(
        "/images/photo_unavailable.png",
        vec![Reply::ok(placeholder_body.clone())],
    );
    let t = tempfile::tempdir().unwrap();
    let mut args = base_args(&server, "out", "30");
    args.extend([
        "--csv",
        Box::leak(csv().into_boxed_str()),
        "--placeholder-sha1",
        Box::leak(placeholder_sha1.into_boxed_str()),
    ]);
    let (code, err) = run_bounded(t.path(), &args, Duration::from_secs(90));
    assert_eq!(code, 0, "{err}");
    let out = t.path().join("out");
    let manifest: Vec<serde_json::Value> = std::fs::read_to_string(out.join("manifest.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(manifest.len(), 30);
    for m in &manifest {
        let id = m["id"].as_str().unwrap();
        match expect_missing.get(id) {
            Some(cause) => {
                assert_eq!(m["status"], "missing", "{m}");
                assert_eq!(m["cause"], *cause, "{m}");
            }
            None => assert_eq!(m["status"], "ok", "{m}"),
        }
    }
    assert_eq!(
        server.hits(&url_path(&rows[0].image_url)),
        1,
        "404 is not retried"
    );
    assert_eq!(
        server.hits(&url_path(&rows[1].image_url)),
        3,
        "500s are retried until they recover"
    );
    let (train, test) = lists(&out);
    assert_eq!(train.len() + test.len(), 30 - expect_missing.len());
    // Listed in selection order, and every file on disk is a complete served image.
    let listed: Vec<String> = train
        .iter()
        .chain(&test)
        .map(|l| l.rsplit_once(' ').unwrap().0.to_string())
        .collect();
    let mut on_disk: Vec<String> = std::fs::read_dir(out.join("images"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(
        on_disk, sorted,
        "only good images are kept, and no temporary files"
    );
    for (i, r) in rows.iter().enumerate() {
        let p = out.join("images").join(image_name(&r.image_url));
        if p.exists() {
            assert_eq!(std::fs::read(p).unwrap(), bodies[i % bodies.len()]);
        }
    }
    assert!(
        err.contains("Writing train/test for 23 successfully downloaded images"),
        "{err}"
    );

    // A rerun reuses verified files and downloads nothing new that worked.
    let hits_before = server.hits(&url_path(&rows[20].image_url));
    let (code, err) = run_bounded(t.path(), &args, Duration::from_secs(90));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("(23 reused)"), "{err}");
    assert_eq!(server.hits(&url_path(&rows[20].image_url)), hits_before);
    assert_eq!(lists(&out), (train, test));

    // A corrupted file is not trusted on the next run: it is fetched again.
    let victim = out.join("images").join(image_name(&rows[20].image_url));
    std::fs::write(&victim, b"corrupted").unwrap();
    let (code, err) = run_bounded(t.path(), &args, Duration::from_secs(90));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("(22 reused)"), "{err}");
    assert_eq!(std::fs::read(victim).unwrap(), bodies[20 % bodies.len()]);
}

fn serve_selection(server: &Server, rows: &[StyleRow], delay: Duration) {
    let bodies = fixture_bodies();
    for (i, r) in rows.iter().enumerate() {
        let reply = if i % 7 == 3 {
            Reply::status(404)
        } else {
            Reply::ok(bodies[i % bodies.len()].clone())
        };
        server.route(&url_path(&r.image_url), vec![reply.delayed(delay)]);
    }
}

#[test]
fn interrupted_or_killed_runs_resume_to_the_same_lists() {
    let rows = selection(40);
    let server = Server::start();
    serve_selection(&server, &rows, Duration::from_millis(300));
    let t = tempfile::tempdir().unwrap();
    let csv = csv();
    let with = |out: &'static str| {
        let mut a = base_args(&server, out, "40");
        a.extend([
            "--csv",
            Box::leak(csv.clone().into_boxed_str()),
            "--workers",
            "4",
        ]);
        a.into_iter().map(String::from).collect::<Vec<String>>()
    };
    // Reference: one uninterrupted run.
    let args = with("whole");
    let (code, err) = run_bounded(
        t.path(),
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        Duration::from_secs(90),
    );
    assert_eq!(code, 0, "{err}");
    let reference = lists(&t.path().join("whole"));
    assert_eq!(reference.0.len() + reference.1.len(), 40 - 6);

    // A kill is TerminateProcess on Windows; Ctrl-C there is a console
    // event a test cannot send to one child, so SIGINT is tried on Unix only.
    let signals: &[&str] = if cfg!(unix) {
        &["-INT", "-KILL"]
    } else {
        &["-KILL"]
    };
    for &signal in signals {
        let out = format!("cut{signal}");
        let args = with(Box::leak(out.clone().into_boxed_str()));
        let mut child = Command::new(bin())
            .args(&args)
            .current_dir(t.path())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(1200));
        if signal == "-KILL" {
            child.kill().unwrap();
        } else {
            Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status()
                .unwrap();
        }
        let start = Instant::now();
        let status = child.wait().unwrap();
        assert!(start.elapsed() < Duration::from_secs(10), "stops promptly");
        assert!(!status.success());
        let dir = t.path().join(&out);
        if signal == "-INT" {
            assert_eq!(status.code(), Some(130));
            let (tr, te) = lists(&dir);
            assert!(tr.len() + te.len() < 34, "interrupted before the end");
        }
        // No partial file under a final name, whatever the signal.
        for e in std::fs::read_dir(dir.join("images")).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if !name.starts_with('.') {
                assert!(
                    flickr_style::pipeline::decode::is_valid_image(&std::fs::read(&p).unwrap()),
                    "{name}"
                );
            }
        }
        let (code, err) = run_bounded(
            t.path(),
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
            Duration::from_secs(90),
        );
        assert_eq!(code, 0, "{err}");
        assert_eq!(lists(&dir), reference, "resumed after {signal}");
    }
}

#[test]
fn download_model_verifies_sha1_and_resumes() {
    let t = tempfile::tempdir().unwrap();
    let weights: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let sha1 = hex::encode(<sha1::Sha1 as sha1::Digest>::digest(&weights));
    let server = Server::start();
    server.route(
        "/m.caffemodel",
        vec![
            Reply {
                truncate_at: Some(100_000),
                ..Reply::ok(weights.clone())
            },
            Reply::ok(weights.clone()),
        ],
    );
    server.route(
        "/wrong.caffemodel",
        vec![Reply::ok(b"not the model".to_vec())],
    );
    let dir = t.path().join("model");
    std::fs::create_dir(&dir).unwrap();
    let readme = format!(
        "---\nname: M\ncaffemodel: m.caffemodel\ncaffemodel_url: {}\nsha1: {sha1}\n---\n",
        server.url("/m.caffemodel")
    );
    std::fs::write(dir.join("readme.md"), readme).unwrap();

    let (ok, _, err) = common::run(
        t.path(),
        &[
            "download-model",
            "model",
            "--url",
            &server.url("/wrong.caffemodel"),
        ],
    );
    assert!(!ok && err.contains("SHA-1 mismatch"), "{err}");
    assert!(!dir.join("m.caffemodel").exists() && !dir.join("m.caffemodel.part").exists());

    let (ok, _, err) = common::run(t.path(), &["download-model", "model"]);
    assert!(ok, "{err}");
    assert_eq!(std::fs::read(dir.join("m.caffemodel")).unwrap(), weights);
    assert_eq!(
        server.hits("/m.caffemodel"),
        2,
        "the cut-off download was resumed"
    );
    let (ok, _, err) = common::run(t.path(), &["download-model", "model"]);
    assert!(ok && err.contains("already present"), "{err}");
}

#[test]
fn caffe_model_readmes_parse() {
    for m in ["bvlc_reference_caffenet", "finetune_flickr_style"] {
        let p = caffe_ref().join("models").join(m).join("readme.md");
        let info = flickr_style::pipeline::model_zoo::parse_readme(
            &std::fs::read_to_string(&p).unwrap(),
            &p,
        )
        .unwrap();
        assert!(
            info.caffemodel.ends_with(".caffemodel") && info.sha1.len() == 40,
            "{info:?}"
        );
    }
}

#[test]
fn http_proxy_is_honoured_and_oversized_bodies_are_refused() {
    let rows = selection(3);
    let bodies = fixture_bodies();
    let server = Server::start();
    // Through a proxy the request line carries the absolute Flickr URL, so the
    // local server answers for Flickr and nothing leaves this machine.
    for (i, r) in rows.iter().enumerate() {
        server.route(&r.image_url, vec![Reply::ok(bodies[i].clone())]);
    }
    let t = tempfile::tempdir().unwrap();
    let big = bodies[0].len().max(bodies[1].len()).to_string();
    let out = Command::new(bin())
        .args([
            "assemble",
            "--images",
            "3",
            "--seed",
            "831486",
            "--out",
            "out",
            "--csv",
            &csv(),
        ])
        .args([
            "--attempts",
            "1",
            "--timeout",
            "5",
            "--max-image-bytes",
            &big,
        ])
        .env("HTTP_PROXY", &server.base)
        .env("http_proxy", &server.base)
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .current_dir(t.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    for r in &rows[..2] {
        assert_eq!(server.hits(&r.image_url), 1);
    }
    // bodies[2] (the third fixture) is larger than the cap.
    assert!(bodies[2].len() > bodies[0].len().max(bodies[1].len()));
    assert!(
        err.contains("2 available") && err.contains("too_large: 1"),
        "{err}"
    );
}

#[test]
fn dry_run_lists_the_selection_and_a_reader_that_leaves_early_is_no_error() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("data");
    let args = [
        "assemble",
        "--dry-run",
        "--images",
        "2000",
        "--seed",
        "831486",
        "--csv",
        &csv(),
        "--out",
        out.to_str().unwrap(),
    ];
    // The whole listing: the selection, in order, and nothing written.
    let full = Command::new(bin()).args(args).output().unwrap();
    assert!(
        full.status.success(),
        "{}",
        String::from_utf8_lossy(&full.stderr)
    );
    let lines: Vec<String> = String::from_utf8(full.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let picked = selection(2000);
    assert_eq!(lines.len(), picked.len());
    assert!(lines[0].starts_with(&format!("{},{},", picked[0].id, picked[0].image_url)));
    assert!(!out.exists(), "a dry run writes nothing");
    // `| head -1`: the reader closes the pipe after one line; the command
    // stops quietly with success instead of panicking on the closed pipe.
    let mut child = Command::new(bin())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 16];
    std::io::Read::read_exact(&mut stdout, &mut first).unwrap();
    drop(stdout);
    let done = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&done.stderr);
    assert!(done.status.success(), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn the_csv_is_downloaded_inside_assembles_own_runtime() {
    // `--csv URL` (and, without --csv, Caffe's copy on GitHub) is fetched
    // while assemble's downloads run: that once panicked ("Cannot start a
    // runtime from within a runtime").
    let t = tempfile::tempdir().unwrap();
    let server = Server::start();
    server.route(
        "/flickr_style.csv.gz",
        vec![Reply::ok(std::fs::read(csv()).unwrap())],
    );
    let out = t.path().join("data");
    let run = |url: &str| {
        Command::new(bin())
            .args(["assemble", "--dry-run", "--images", "5", "--seed", "831486"])
            .args(["--csv", url, "--out", out.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let done = run(&server.url("/flickr_style.csv.gz"));
    let err = String::from_utf8_lossy(&done.stderr);
    assert!(done.status.success(), "{err}");
    let listed = String::from_utf8(done.stdout).unwrap();
    let picked = selection(5);
    assert_eq!(listed.lines().count(), 5, "{listed}");
    assert!(
        listed.starts_with(&format!("{},", picked[0].id)),
        "{listed}"
    );
    assert!(out.join("flickr_style.csv.gz").is_file());
    // A CSV that cannot be fetched is an error that says what to do.
    server.route("/gone.csv.gz", vec![Reply::status(404)]);
    let done = run(&server.url("/gone.csv.gz"));
    let err = String::from_utf8_lossy(&done.stderr);
    assert!(!done.status.success() && !err.contains("panicked"), "{err}");
    assert!(
        err.contains("gone.csv.gz") && err.contains("--csv"),
        "{err}"
    );
}
