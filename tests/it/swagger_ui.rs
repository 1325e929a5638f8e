//! Swagger UI as a person sees it, in headless Chromium: each service's
//! `/docs` renders every operation of its OpenAPI document once (aliases
//! are left out), and "Try it out" on a GET gets a 200.

use crate::common::browser::Browser;
use crate::common::{wait_for, Client, TestApp};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;

/// `GET /produits/`, … of an OpenAPI document.
fn documented(spec: &Value) -> BTreeSet<String> {
    let mut ops = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for method in item.as_object().unwrap().keys() {
            ops.insert(format!("{} {path}", method.to_uppercase()));
        }
    }
    ops
}

/// The operations the page shows, as `METHOD path`, duplicates kept.
const SHOWN: &str = r#"
return Array.from(document.querySelectorAll('.opblock')).map(block => {
  const method = block.querySelector('.opblock-summary-method').textContent.trim();
  const path = block.querySelector('.opblock-summary-path');
  const text = path.getAttribute('data-path') || path.textContent;
  return method + ' ' + text.replace(/\u200b/g, '').trim();
});"#;

/// The summary of the operation `METHOD path` (clicking it opens it).
const SUMMARY: &str = r#"
const [method, path] = arguments;
for (const block of document.querySelectorAll('.opblock')) {
  const m = block.querySelector('.opblock-summary-method').textContent.trim();
  const p = block.querySelector('.opblock-summary-path');
  const text = (p.getAttribute('data-path') || p.textContent).replace(/\u200b/g, '').trim();
  if (m === method && text === path) return block.querySelector('.opblock-summary');
}
return null;"#;

async fn check_docs(browser: &Browser, client: &Client, base: &str, try_get: &str) {
    let spec = client.get("/openapi.json").await.expect(200).body;
    let expected = documented(&spec);
    browser.goto(&format!("{base}/docs")).await;
    browser.wait_for_all(".opblock", expected.len()).await;
    let shown: Vec<String> = serde_json::from_value(browser.script(SHOWN, json!([])).await)
        .expect("a list of operations");
    let unique: BTreeSet<String> = shown.iter().cloned().collect();
    assert_eq!(
        unique.len(),
        shown.len(),
        "an operation shown twice: {shown:?}"
    );
    assert_eq!(unique, expected, "{base}/docs");

    let summary = browser
        .script_element(SUMMARY, json!(["GET", try_get]))
        .await
        .unwrap_or_else(|| panic!("GET {try_get} on {base}/docs"));
    browser.click(&summary).await;
    let try_out = browser
        .wait_for_all(".opblock.is-open .try-out__btn", 1)
        .await;
    browser.click(&try_out[0]).await;
    let execute = browser.wait_for_all(".opblock.is-open .execute", 1).await;
    browser.click(&execute[0]).await;
    let status = wait_for(
        &format!("the answer to GET {try_get} on {base}/docs"),
        Duration::from_secs(20),
        || async {
            let cells = browser
                .find_all(".opblock.is-open .live-responses-table tbody .response-col_status")
                .await;
            let cell = cells.first()?;
            let text = browser.text(cell).await;
            (!text.trim().is_empty()).then_some(text)
        },
    )
    .await;
    assert_eq!(status.trim(), "200", "GET {try_get} from {base}/docs");
}

#[tokio::test]
async fn each_service_docs_page_renders_its_operations_once_and_tries_a_get() {
    let app = TestApp::with_worker().await;
    let worker = Client::new(app.worker.as_ref().unwrap());
    let browser = Browser::start().await;
    for (running, client, try_get) in [
        (&app.products_server, &app.products, "/produits/"),
        (&app.orders_server, &app.orders, "/commandes"),
        (app.worker.as_ref().unwrap(), &worker, "/healthz"),
    ] {
        check_docs(&browser, client, &running.url(""), try_get).await;
    }
    browser.quit().await;
}
