//! Headless Chromium driven through ChromeDriver's W3C WebDriver protocol
//! (plain JSON over HTTP), for tests of pages as a person sees them.
//! Chromium and ChromeDriver are Debian's (`chromium`, `chromium-driver`);
//! a test fails, never skips, when they are missing.

use crate::process::free_port;
use crate::wait_for;
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// W3C's key for element references.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A ChromeDriver process with one headless browser session.
pub struct Browser {
    driver: Child,
    base: String,
    http: reqwest::Client,
}

/// An element of the current page.
#[derive(Debug, Clone)]
pub struct Element(String);

impl Browser {
    pub async fn start() -> Browser {
        for binary in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                std::path::Path::new(binary).exists(),
                "{binary} is missing: apt-get install chromium chromium-driver"
            );
        }
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let mut browser = Browser {
            driver,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        };
        let status = format!("{}/status", browser.base);
        let http = browser.http.clone();
        wait_for(
            "chromedriver to answer",
            Duration::from_secs(30),
            || async {
                let answer = http.get(&status).send().await.ok()?;
                let body: Value = answer.json().await.ok()?;
                (body["value"]["ready"] == true).then_some(())
            },
        )
        .await;
        let session = browser
            .call(
                reqwest::Method::POST,
                "/session",
                json!({"capabilities": {"alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": CHROMIUM,
                        "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                                 "--disable-dev-shm-usage", "--window-size=1280,2000"],
                    },
                }}}),
            )
            .await;
        let id = session["sessionId"].as_str().expect("a session id");
        browser.base = format!("{}/session/{id}", browser.base);
        browser
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if !body.is_null() {
            request = request.json(&body);
        }
        let answer: Value = request
            .send()
            .await
            .expect("chromedriver answers")
            .json()
            .await
            .expect("chromedriver answers JSON");
        if let Some(error) = answer["value"]["error"].as_str() {
            panic!("WebDriver {path}: {error}: {}", answer["value"]["message"]);
        }
        answer["value"].clone()
    }

    pub async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", json!({"url": url}))
            .await;
    }

    /// Every element matching `css` now.
    pub async fn find_all(&self, css: &str) -> Vec<Element> {
        let found = self
            .call(
                reqwest::Method::POST,
                "/elements",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        found
            .as_array()
            .expect("a list of elements")
            .iter()
            .map(|e| {
                Element(
                    e[ELEMENT]
                        .as_str()
                        .unwrap_or_else(|| panic!("an element id in {e}"))
                        .to_owned(),
                )
            })
            .collect()
    }

    /// Waits until at least `n` elements match `css`.
    pub async fn wait_for_all(&self, css: &str, n: usize) -> Vec<Element> {
        wait_for(
            &format!("{n} × {css} on the page"),
            Duration::from_secs(30),
            || async {
                let found = self.find_all(css).await;
                (found.len() >= n).then_some(found)
            },
        )
        .await
    }

    /// Runs `script` in the page with `args`, returning its value.
    pub async fn script(&self, script: &str, args: Value) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            json!({"script": script, "args": args}),
        )
        .await
    }

    pub async fn click(&self, element: &Element) {
        // Scrolled into view first: a click outside the viewport misses.
        self.script(
            "arguments[0].scrollIntoView({block: 'center'});",
            json!([self.reference(element)]),
        )
        .await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{}/click", element.0),
            json!({}),
        )
        .await;
    }

    pub async fn text(&self, element: &Element) -> String {
        self.call(
            reqwest::Method::GET,
            &format!("/element/{}/text", element.0),
            Value::Null,
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    pub async fn attribute(&self, element: &Element, name: &str) -> Option<String> {
        self.call(
            reqwest::Method::GET,
            &format!("/element/{}/attribute/{name}", element.0),
            Value::Null,
        )
        .await
        .as_str()
        .map(str::to_owned)
    }

    /// Runs `script`, which returns a DOM element (or null).
    pub async fn script_element(&self, script: &str, args: Value) -> Option<Element> {
        let value = self.script(script, args).await;
        value[ELEMENT].as_str().map(|id| Element(id.to_owned()))
    }

    /// Ends the session (and its Chromium), then the driver.
    pub async fn quit(self) {
        self.call(reqwest::Method::DELETE, "", Value::Null).await;
    }

    /// The element as a script argument.
    pub fn reference(&self, element: &Element) -> Value {
        json!({ ELEMENT: element.0 })
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends the session's Chromium with the driver.
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
