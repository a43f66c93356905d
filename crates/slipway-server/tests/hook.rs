//! The post-receive hook against real pushes and a real HTTP receiver.

mod common;

use common::{git_in, TestRepo};
use slipway_server::git::RefChangeKind;
use slipway_server::hook::{self, HookTarget};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

/// One request the receiver got.
struct Received {
    request_line: String,
    authorization: Option<String>,
    body: String,
}

/// A tiny HTTP/1.x server on 127.0.0.1 answering `status` to every request and sending
/// what it received to the returned channel.
fn receiver(status: u16) -> (String, mpsc::Receiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            let mut len = 0usize;
            let mut auth = None;
            let mut expect = false;
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" || h == "\n" {
                    break;
                }
                let (k, v) = h.split_once(':').unwrap_or((&h, ""));
                let v = v.trim().to_string();
                match k.to_ascii_lowercase().as_str() {
                    "content-length" => len = v.parse().unwrap_or(0),
                    "authorization" => auth = Some(v),
                    "expect" => expect = true,
                    _ => {}
                }
            }
            if expect {
                let _ = stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
            }
            let mut body = vec![0; len];
            let _ = reader.read_exact(&mut body);
            let _ = stream.write_all(
                format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            );
            let _ = tx.send(Received {
                request_line: request_line.trim_end().to_string(),
                authorization: auth,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
    });
    (format!("http://{addr}/api/v1/projects/7/hook"), rx)
}

/// A port nothing listens on.
fn closed_port_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    drop(l);
    format!("http://127.0.0.1:{port}/hook")
}

fn push(work: &Path, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut c = Command::new("git");
    c.arg("-C").arg(work).arg("push").args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().expect("git push");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn setup(tmp: &Path) -> (TestRepo, TestRepo) {
    let bare = TestRepo::init_bare(&tmp.join("origin.git"));
    let work = TestRepo::init(&tmp.join("work"));
    work.commit(&[("a.txt", "a\n")], "first");
    work.git(&["remote", "add", "origin", bare.path.to_str().expect("utf8")]);
    (bare, work)
}

#[test]
fn a_push_notifies_the_server_with_every_ref_and_option() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (bare, work) = setup(tmp.path());
    let (url, rx) = receiver(204);
    let token = hook::new_token().expect("token");
    let installed = hook::install(
        &bare.path,
        &HookTarget {
            url,
            token: token.clone(),
        },
    )
    .expect("install");
    assert_eq!(installed.chained, None);

    bare.git(&["config", "receive.advertisePushOptions", "true"]);
    work.git(&["tag", "-a", "v1.0", "-m", "release"]);
    work.git(&["branch", "feature"]);
    let (ok, stderr) = push(
        &work.path,
        &["-o", "ci.skip", "origin", "main", "feature", "v1.0"],
        &[],
    );
    assert!(ok, "{stderr}");
    assert!(
        !stderr.contains("slipway:"),
        "no complaint when the server answers: {stderr}"
    );

    let got = rx.recv_timeout(Duration::from_secs(10)).expect("notified");
    assert_eq!(got.request_line, "POST /api/v1/projects/7/hook HTTP/1.1");
    assert_eq!(
        got.authorization.as_deref(),
        Some(format!("Bearer {token}").as_str())
    );
    assert!(hook::token_matches(got.authorization.as_deref(), &token));
    let n = hook::parse_notification(&got.body).expect("body");
    let mut refs: Vec<(&str, RefChangeKind)> = n
        .updates
        .iter()
        .map(|u| (u.ref_name.as_str(), u.kind()))
        .collect();
    refs.sort();
    assert_eq!(
        refs,
        vec![
            ("refs/heads/feature", RefChangeKind::Created),
            ("refs/heads/main", RefChangeKind::Created),
            ("refs/tags/v1.0", RefChangeKind::Created),
        ]
    );
    let main = n
        .updates
        .iter()
        .find(|u| u.ref_name == "refs/heads/main")
        .expect("main");
    assert_eq!(main.new.as_deref(), Some(work.head().as_str()));
    assert_eq!(n.push_options, vec!["ci.skip"]);

    // An update and a deletion in the next push.
    let old = work.head();
    let new = work.commit(&[("b.txt", "b\n")], "second");
    let (ok, stderr) = push(&work.path, &["origin", "main", ":feature"], &[]);
    assert!(ok, "{stderr}");
    let got = rx.recv_timeout(Duration::from_secs(10)).expect("notified");
    let n = hook::parse_notification(&got.body).expect("body");
    let main = n
        .updates
        .iter()
        .find(|u| u.ref_name == "refs/heads/main")
        .expect("main");
    assert_eq!(
        (main.old.as_deref(), main.new.as_deref()),
        (Some(old.as_str()), Some(new.as_str()))
    );
    let feature = n
        .updates
        .iter()
        .find(|u| u.ref_name == "refs/heads/feature")
        .expect("feature");
    assert_eq!(feature.kind(), RefChangeKind::Deleted);
}

#[test]
fn every_http_client_of_the_hook_works() {
    for client in ["curl", "wget", "bash"] {
        let tmp = tempfile::tempdir().expect("tmp");
        let (bare, work) = setup(tmp.path());
        let (url, rx) = receiver(200);
        hook::install(
            &bare.path,
            &HookTarget {
                url,
                token: "t0k3n".into(),
            },
        )
        .expect("install");
        let (ok, stderr) = push(
            &work.path,
            &["origin", "main"],
            &[("SLIPWAY_HOOK_CLIENT", client)],
        );
        assert!(ok, "{client}: {stderr}");
        assert!(!stderr.contains("slipway:"), "{client}: {stderr}");
        let got = rx.recv_timeout(Duration::from_secs(10)).expect("notified");
        assert_eq!(
            got.authorization.as_deref(),
            Some("Bearer t0k3n"),
            "{client}"
        );
        let n = hook::parse_notification(&got.body).expect("body");
        assert_eq!(n.updates.len(), 1, "{client}: {:?}", got.body);
        assert_eq!(
            n.updates[0].new.as_deref(),
            Some(work.head().as_str()),
            "{client}"
        );
    }
}

/// Creates `n` tags at HEAD in one `git update-ref --stdin`.
fn many_tags(repo: &TestRepo, n: usize) {
    let mut script = String::new();
    for i in 0..n {
        script.push_str(&format!(
            "create refs/tags/release-candidate-build-{i:05} HEAD\n"
        ));
    }
    let status = Command::new("git")
        .arg("-C")
        .arg(&repo.path)
        .args(["update-ref", "--stdin"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            if let Some(mut stdin) = c.stdin.take() {
                stdin.write_all(script.as_bytes())?;
            }
            c.wait()
        })
        .expect("update-ref");
    assert!(status.success());
}

#[test]
fn a_push_of_thousands_of_refs_gets_through_every_client() {
    for client in ["curl", "wget", "bash"] {
        let tmp = tempfile::tempdir().expect("tmp");
        let (bare, work) = setup(tmp.path());
        // Over 128 KiB of hook input: more than one command-line argument may hold.
        many_tags(&work, 2000);
        let (url, rx) = receiver(204);
        hook::install(
            &bare.path,
            &HookTarget {
                url,
                token: "t".into(),
            },
        )
        .expect("install");
        let (ok, stderr) = push(
            &work.path,
            &["--quiet", "origin", "refs/tags/*:refs/tags/*"],
            &[("SLIPWAY_HOOK_CLIENT", client)],
        );
        assert!(ok, "{client}: {stderr}");
        assert!(!stderr.contains("slipway:"), "{client}: {stderr}");
        let got = rx.recv_timeout(Duration::from_secs(20)).expect("notified");
        assert!(
            got.body.len() > 128 * 1024,
            "{client}: {} bytes",
            got.body.len()
        );
        let n = hook::parse_notification(&got.body).expect("body");
        assert_eq!(n.updates.len(), 2000, "{client}");
    }
}

#[test]
fn a_server_that_is_down_or_refuses_does_not_fail_the_push() {
    for client in ["curl", "wget", "bash"] {
        let tmp = tempfile::tempdir().expect("tmp");
        let (bare, work) = setup(tmp.path());
        hook::install(
            &bare.path,
            &HookTarget {
                url: closed_port_url(),
                token: "t".into(),
            },
        )
        .expect("install");
        let (ok, stderr) = push(
            &work.path,
            &["origin", "main"],
            &[("SLIPWAY_HOOK_CLIENT", client)],
        );
        assert!(ok, "{client}: the push must succeed: {stderr}");
        assert!(
            stderr.contains("remote: slipway: could not notify the server at http://127.0.0.1:"),
            "{client}: {stderr}"
        );
        assert!(stderr.contains("the push is kept"), "{client}: {stderr}");
        assert_eq!(bare.git(&["rev-parse", "main"]), work.head());
    }
    // A server that answers with an error (a wrong token, say) is reported the same way.
    let tmp = tempfile::tempdir().expect("tmp");
    let (bare, work) = setup(tmp.path());
    let (url, rx) = receiver(401);
    hook::install(
        &bare.path,
        &HookTarget {
            url,
            token: "wrong".into(),
        },
    )
    .expect("install");
    let (ok, stderr) = push(&work.path, &["origin", "main"], &[]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("could not notify"), "{stderr}");
    assert!(rx.recv_timeout(Duration::from_secs(10)).is_ok());
}

#[test]
fn install_is_idempotent_and_chains_an_existing_hook() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (bare, work) = setup(tmp.path());
    let seen = tmp.path().join("seen.txt");
    let hooks = bare.path.join("hooks");
    std::fs::create_dir_all(&hooks).expect("mkdir");
    let theirs = format!(
        "#!/bin/sh\ncat > '{}'\necho \"args: $#\" >> '{}'\n",
        seen.display(),
        seen.display()
    );
    std::fs::write(hooks.join("post-receive"), &theirs).expect("write");
    std::fs::set_permissions(
        hooks.join("post-receive"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");

    let (url, rx) = receiver(204);
    let first = hook::install(
        &bare.path,
        &HookTarget {
            url: url.clone(),
            token: "a".into(),
        },
    )
    .expect("install");
    assert_eq!(first.chained, Some(hooks.join(hook::CHAINED)));
    let second = hook::install(
        &bare.path,
        &HookTarget {
            url,
            token: "b".into(),
        },
    )
    .expect("again");
    assert_eq!(
        second.chained, None,
        "our own hook is replaced, not chained"
    );
    assert_eq!(
        std::fs::read_to_string(hooks.join(hook::CHAINED)).expect("chained"),
        theirs
    );

    let (ok, stderr) = push(&work.path, &["origin", "main"], &[]);
    assert!(ok, "{stderr}");
    let got = rx.recv_timeout(Duration::from_secs(10)).expect("notified");
    assert_eq!(got.authorization.as_deref(), Some("Bearer b"));
    let chained_saw = std::fs::read_to_string(&seen).expect("chained ran");
    assert_eq!(
        chained_saw,
        format!(
            "{} {} refs/heads/main\nargs: 0\n",
            "0".repeat(40),
            work.head()
        )
    );

    assert!(hook::uninstall(&bare.path).expect("uninstall"));
    assert_eq!(
        std::fs::read_to_string(hooks.join("post-receive")).expect("restored"),
        theirs
    );
    assert!(!hooks.join(hook::CHAINED).exists());
    assert!(!hook::uninstall(&bare.path).expect("not ours"));
}

#[test]
fn install_into_a_working_tree_honours_core_hooks_path() {
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = TestRepo::init(&tmp.path().join("app"));
    repo.commit(&[("a", "a")], "a");
    let i = hook::install(
        &repo.path,
        &HookTarget {
            url: "http://127.0.0.1:9/h".into(),
            token: "x".into(),
        },
    )
    .expect("install");
    assert_eq!(i.path, repo.path.join(".git/hooks/post-receive"));
    git_in(&repo.path, &["config", "core.hooksPath", "githooks"]);
    let i = hook::install(
        &repo.path,
        &HookTarget {
            url: "http://127.0.0.1:9/h".into(),
            token: "x".into(),
        },
    )
    .expect("install");
    assert_eq!(i.path, repo.path.join("githooks/post-receive"));
    let mode = std::fs::metadata(&i.path).expect("meta").permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o700
    );
    assert!(matches!(
        hook::install(
            tmp.path(),
            &HookTarget {
                url: "http://127.0.0.1:9/h".into(),
                token: "x".into()
            }
        ),
        Err(hook::HookError::NotARepository(_))
    ));
}
