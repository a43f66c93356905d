//! A small W3C WebDriver client for the browser tests: Debian's `chromedriver` driving
//! headless Chromium, spoken to as JSON over HTTP with the client Slipway already has
//! (`slipway_server::client`). The dozen commands the tests need do not justify a
//! WebDriver crate and its own HTTP and TLS stacks in the build.
//!
//! Calls are blocking (the tests read like a person's steps); each waits on its own
//! small runtime.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use serde_json::{json, Value};
use slipway_server::client::Client;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The key W3C WebDriver gives element references under.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Whether a missing browser must fail the test (CI) rather than skip it.
pub fn browser_required() -> bool {
    std::env::var("SLIPWAY_REQUIRE_BROWSER").as_deref() == Ok("1")
}

fn which(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for n in names {
            let p = dir.join(n);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// A port nobody listens on now (the driver and the server are given one).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A page element.
#[derive(Debug, Clone)]
pub struct Element(String);

pub struct Browser {
    rt: tokio::runtime::Runtime,
    client: Client,
    session: String,
    driver: Child,
    _profile: tempfile::TempDir,
    /// Where [`Browser::screenshot`] writes.
    pub shots: PathBuf,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a fresh profile. `None` when
    /// they are not installed (a failure instead with `SLIPWAY_REQUIRE_BROWSER=1`).
    pub fn start(shots: &Path) -> Option<Browser> {
        let chromium = std::env::var_os("SLIPWAY_CHROMIUM")
            .map(PathBuf::from)
            .or_else(|| which(&["chromium", "chromium-browser", "google-chrome"]));
        let driver = which(&["chromedriver"]);
        let (Some(chromium), Some(driver)) = (chromium, driver) else {
            assert!(
                !browser_required(),
                "SLIPWAY_REQUIRE_BROWSER=1 but chromium or chromedriver is not installed \
                 (apt-get install chromium chromium-driver)"
            );
            eprintln!("skipped: chromium and chromedriver are not installed");
            return None;
        };
        let port = free_port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut client = Client::new(&format!("http://127.0.0.1:{port}"), None).unwrap();
        client.timeout = Duration::from_secs(60);
        let profile = tempfile::tempdir().unwrap();
        let mut b = Browser {
            rt,
            client,
            session: String::new(),
            driver: child,
            _profile: profile,
            shots: shots.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while b.call("GET", "/status", None).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "pageLoadStrategy": "normal",
            "goog:chromeOptions": {
                "binary": chromium.display().to_string(),
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--disable-dev-shm-usage", "--window-size=1366,900",
                    "--hide-scrollbars", "--force-device-scale-factor=1",
                    format!("--user-data-dir={}", b._profile.path().display()),
                ],
            },
        }}});
        let v = b
            .call("POST", "/session", Some(caps))
            .unwrap_or_else(|e| panic!("cannot start Chromium through chromedriver: {e}"));
        b.session = v["sessionId"].as_str().expect("session id").to_string();
        Some(b)
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let fut = async {
            match &body {
                Some(b) => self.client.json(method, path, b).await,
                None if method == "POST" => self.client.json(method, path, &json!({})).await,
                None => self.client.send(method, path, None, &[]).await,
            }
        };
        let r = self.rt.block_on(fut).map_err(|e| e.to_string())?;
        let v = r.json();
        if r.ok() {
            Ok(v["value"].clone())
        } else {
            Err(format!(
                "{method} {path}: {} {}",
                v["value"]["error"].as_str().unwrap_or("?"),
                v["value"]["message"].as_str().unwrap_or(&r.text())
            ))
        }
    }

    fn session_call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    pub fn goto(&self, url: &str) {
        self.session_call("POST", "/url", Some(json!({"url": url})))
            .unwrap_or_else(|e| panic!("{e}"));
    }

    pub fn url(&self) -> String {
        self.session_call("GET", "/url", None)
            .unwrap()
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// The first element matching a CSS selector, if any.
    pub fn try_find(&self, css: &str) -> Option<Element> {
        self.session_call(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        )
        .ok()
        .and_then(|v| v[ELEMENT].as_str().map(|s| Element(s.to_string())))
    }

    pub fn find(&self, css: &str) -> Element {
        self.try_find(css)
            .unwrap_or_else(|| panic!("no element matches {css:?} on {}", self.url()))
    }

    pub fn find_all(&self, css: &str) -> Vec<Element> {
        self.session_call(
            "POST",
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        )
        .map(|v| {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e[ELEMENT].as_str().map(|s| Element(s.to_string())))
                .collect()
        })
        .unwrap_or_default()
    }

    /// Finds the element matching `css` and clicks it. Live updates swap whole regions
    /// of a page, so an element found a moment ago may be gone by the click ("stale
    /// element reference"): find it again and retry for a few seconds, as a person
    /// would click the button again.
    pub fn click_css(&self, css: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let e = self.find(css);
            match self.session_call("POST", &format!("/element/{}/click", e.0), None) {
                Ok(_) => return,
                Err(err)
                    if err.contains("stale element") && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(err) => panic!("click {css:?}: {err}"),
            }
        }
    }

    pub fn click(&self, e: &Element) {
        self.session_call("POST", &format!("/element/{}/click", e.0), None)
            .unwrap_or_else(|err| panic!("click: {err}"));
    }

    pub fn text(&self, e: &Element) -> String {
        self.session_call("GET", &format!("/element/{}/text", e.0), None)
            .map(|v| v.as_str().unwrap_or("").to_string())
            .unwrap_or_default()
    }

    pub fn attr(&self, e: &Element, name: &str) -> Option<String> {
        self.session_call("GET", &format!("/element/{}/attribute/{name}", e.0), None)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
    }

    pub fn displayed(&self, e: &Element) -> bool {
        self.session_call("GET", &format!("/element/{}/displayed", e.0), None)
            .map(|v| v.as_bool().unwrap_or(false))
            .unwrap_or(false)
    }

    /// Types into a field (after clearing it).
    pub fn fill(&self, css: &str, text: &str) {
        let e = self.find(css);
        let _ = self.session_call("POST", &format!("/element/{}/clear", e.0), None);
        self.session_call(
            "POST",
            &format!("/element/{}/value", e.0),
            Some(json!({"text": text})),
        )
        .unwrap_or_else(|err| panic!("typing into {css}: {err}"));
    }

    /// Runs `script` (a function body; `arguments` holds `args`) and returns its value.
    pub fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.session_call(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
        .unwrap_or_else(|e| panic!("script failed: {e}"))
    }

    pub fn delete_cookies(&self) {
        self.session_call("DELETE", "/cookie", None).unwrap();
    }

    /// Saves a screenshot of the viewport as `name.png`; returns its path.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        use base64::Engine;
        let v = self.session_call("GET", "/screenshot", None).unwrap();
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or(""))
            .unwrap();
        std::fs::create_dir_all(&self.shots).unwrap();
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    /// Sets the window size (a tall window for a whole page in one screenshot).
    pub fn resize(&self, width: u32, height: u32) {
        self.session_call(
            "POST",
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        )
        .unwrap();
    }

    /// Polls `f` until it gives a value, for at most `secs` seconds.
    pub fn wait<T>(&self, what: &str, secs: u64, mut f: impl FnMut(&Browser) -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(v) = f(self) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "waited {secs}s for {what} on {}",
                self.url()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until an element matches `css`.
    pub fn wait_for(&self, css: &str, secs: u64) -> Element {
        self.wait(&format!("an element matching {css:?}"), secs, |b| {
            b.try_find(css)
        })
    }

    /// Marks the current document, to tell later whether the page was reloaded.
    pub fn mark_document(&self) {
        self.js("window.__slipwayMark = 'kept'; return null;", vec![]);
    }

    /// Whether the document marked by [`Browser::mark_document`] is still the one shown.
    pub fn same_document(&self) -> bool {
        self.js("return window.__slipwayMark === 'kept';", vec![]) == json!(true)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.session_call("DELETE", "", None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
