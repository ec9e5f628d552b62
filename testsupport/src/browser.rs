//! Headless Chromium driven over WebDriver: Debian's `chromedriver` started on a port it picks
//! itself (`--port=0`, read back from its first lines), one session, killed on drop.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};

use crate::ProcessGuard;

/// Starting or talking to the browser failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrowserError {
    /// `chromedriver` could not be started (install `chromium` and `chromium-driver`).
    #[error("starting chromedriver: {0} (apt-get install chromium chromium-driver)")]
    Spawn(#[from] std::io::Error),
    /// `chromedriver` did not report its port in time.
    #[error("chromedriver did not report its port")]
    NoPort,
    /// A WebDriver request failed.
    #[error("webdriver request: {0}")]
    Http(#[from] reqwest::Error),
    /// WebDriver answered with an error.
    #[error("webdriver error: {0}")]
    WebDriver(String),
    /// A screenshot was not valid base64.
    #[error("screenshot decoding: {0}")]
    Decode(#[from] base64::DecodeError),
}

/// A headless Chromium session.
pub struct Browser {
    _driver: ProcessGuard,
    base: String,
    session: String,
    http: reqwest::Client,
}

/// Chromium binary used (Debian's).
pub const CHROMIUM: &str = "/usr/bin/chromium";

impl Browser {
    /// Starts `chromedriver` and a headless Chromium session with a `width`×`height` window.
    pub async fn start(width: u32, height: u32) -> Result<Browser, BrowserError> {
        let mut cmd = Command::new("chromedriver");
        cmd.arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut driver = ProcessGuard::spawn("chromedriver", &mut cmd)?;
        let out = driver
            .child_mut()
            .stdout
            .take()
            .ok_or(BrowserError::NoPort)?;
        let (tx, rx) = mpsc::channel();
        // Reads chromedriver's log until it names its port; then drains it so it never blocks.
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if !sent {
                    if let Some(p) = line
                        .split("started successfully on port ")
                        .nth(1)
                        .and_then(|r| r.trim_end_matches('.').trim().parse::<u16>().ok())
                    {
                        let _ = tx.send(p);
                        sent = true;
                    }
                }
            }
        });
        let port = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(20)))
            .await
            .map_err(|_| BrowserError::NoPort)?
            .map_err(|_| BrowserError::NoPort)?;
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()?;
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--no-first-run",
                         format!("--window-size={width},{height}")]
            }
        }}});
        let v: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await?
            .json()
            .await?;
        let session = v["value"]["sessionId"]
            .as_str()
            .ok_or_else(|| BrowserError::WebDriver(v.to_string()))?
            .to_owned();
        Ok(Browser {
            _driver: driver,
            base,
            session,
            http,
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> Result<Value, BrowserError> {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut req = self.http.request(method.clone(), url);
        if method == reqwest::Method::POST {
            req = req.json(&body);
        }
        let v: Value = req.send().await?.json().await?;
        if v["value"].get("error").is_some() {
            return Err(BrowserError::WebDriver(v["value"].to_string()));
        }
        Ok(v["value"].clone())
    }

    /// Navigates to `url` and waits for the load.
    pub async fn goto(&self, url: &str) -> Result<(), BrowserError> {
        self.call(reqwest::Method::POST, "/url", json!({ "url": url }))
            .await
            .map(|_| ())
    }

    /// Runs `script` (a function body; `return` its result) in the page.
    pub async fn eval(&self, script: &str) -> Result<Value, BrowserError> {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            json!({ "script": script, "args": [] }),
        )
        .await
    }

    /// Runs `script` as an async function body (`await` allowed) and returns its result.
    pub async fn eval_async(&self, script: &str) -> Result<Value, BrowserError> {
        let wrapped = format!(
            "const done = arguments[arguments.length - 1];\
             (async () => {{ {script} }})().then(done, (e) => done('error: ' + e));"
        );
        self.call(
            reqwest::Method::POST,
            "/execute/async",
            json!({ "script": wrapped, "args": [] }),
        )
        .await
    }

    /// A PNG screenshot of the viewport.
    pub async fn screenshot(&self) -> Result<Vec<u8>, BrowserError> {
        let v = self
            .call(reqwest::Method::GET, "/screenshot", Value::Null)
            .await?;
        let b64 = v.as_str().unwrap_or_default();
        Ok(base64::engine::general_purpose::STANDARD.decode(b64)?)
    }

    /// Ends the session (the driver process is killed on drop either way).
    pub async fn close(self) -> Result<(), BrowserError> {
        self.call(reqwest::Method::DELETE, "", Value::Null)
            .await
            .map(|_| ())
    }
}
