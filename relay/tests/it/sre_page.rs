//! The fleet page in a real headless Chromium (Debian's `chromium` + `chromium-driver`,
//! installed by scripts/test-all.sh): it loads, a drone appears within 2 s of registering and
//! disappears when it leaves, the latency chart draws non-zero data, and a page behind a viewer
//! token refuses without it.

use std::time::Duration;

use contrail_testsupport::{poll_until_async, Browser};
use serde_json::Value;

use crate::common::{self, send_n, start_with, test_config};

const DEADLINE: Duration = Duration::from_secs(15);

async fn browser() -> Browser {
    Browser::start(1400, 1000)
        .await
        .expect("headless chromium (apt-get install chromium chromium-driver)")
}

async fn eval(b: &Browser, script: &str) -> Value {
    b.eval(script).await.unwrap_or(Value::Null)
}

/// Number of live updates the page has rendered.
async fn updates(b: &Browser) -> u64 {
    eval(b, "return Number(document.body.dataset.updates || 0);")
        .await
        .as_u64()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_page_shows_drones_live_and_draws_latency() {
    let (relay, mut rx) = common::start_with_channel(4096).await;
    let sink = tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let b = browser().await;
    b.goto(&format!("{}/", relay.http()))
        .await
        .expect("open page");
    assert_eq!(eval(&b, "return document.title;").await, "Contrail fleet");
    poll_until_async(DEADLINE, "first live update", async || {
        (updates(&b).await >= 1).then_some(())
    })
    .await;
    let relay_row = eval(
        &b,
        "return document.querySelectorAll('#relays tbody tr').length;",
    )
    .await;
    assert_eq!(relay_row, 1, "this relay is listed");

    // A drone appears within 2 s of registering.
    let agent = relay.agent("page-drone-1").await;
    let registered = tokio::time::Instant::now();
    let row = "return !!document.querySelector('tr[data-agent=\"page-drone-1\"]');";
    poll_until_async(Duration::from_secs(2), "drone row within 2 s", async || {
        (eval(&b, row).await == Value::Bool(true)).then_some(())
    })
    .await;
    eprintln!("drone appeared after {:?}", registered.elapsed());

    // Telemetry: the commit-latency chart gets non-zero data and draws bars.
    send_n(&agent, 300, &[1u8; 64]).await;
    agent.wait_acked(300).await.expect("acked");
    let chart = "const c = document.getElementById('chart-commit'); if (!c) return 0;\
        const cv = c.querySelector('canvas'); const d = cv.getContext('2d')\
        .getImageData(0, 0, cv.width, cv.height).data; let bar = 0;\
        for (let i = 0; i < d.length; i += 4) { if (d[i] === 0x2f && d[i+1] === 0x6f && d[i+2] === 0xb3) bar++; }\
        return Number(c.dataset.count) > 0 && bar > 0 ? Number(c.dataset.count) : 0;";
    let count = poll_until_async(DEADLINE, "latency chart with data", async || {
        eval(&b, chart).await.as_u64().filter(|&n| n > 0)
    })
    .await;
    assert_eq!(
        count, 300,
        "one commit latency per frame in the last minute"
    );
    let frames = "const r = document.querySelector('tr[data-agent=\"page-drone-1\"]');\
        return r ? r.textContent : '';";
    let text = eval(&b, frames).await;
    assert!(
        text.as_str().is_some_and(|t| t.contains("page-drone-1")),
        "{text}"
    );

    // Search is server-side: a query that matches nothing empties the table.
    b.eval(
        "const s = document.getElementById('search'); s.value = 'nomatch';\
            s.dispatchEvent(new Event('input')); return true;",
    )
    .await
    .expect("type search");
    poll_until_async(DEADLINE, "search narrows the list", async || {
        (eval(
            &b,
            "return document.querySelectorAll('#drones tbody tr').length;",
        )
        .await
            == 0
            && eval(
                &b,
                "return document.getElementById('drone-total').textContent;",
            )
            .await
            .as_str()
            .is_some_and(|t| t.contains("0 matching")))
        .then_some(())
    })
    .await;
    b.eval(
        "const s = document.getElementById('search'); s.value = 'page-drone';\
            s.dispatchEvent(new Event('input')); return true;",
    )
    .await
    .expect("type search");
    poll_until_async(DEADLINE, "search finds the drone", async || {
        (eval(&b, row).await == Value::Bool(true)).then_some(())
    })
    .await;

    // It disappears when it leaves.
    agent.close().await.expect("close");
    poll_until_async(DEADLINE, "drone row gone", async || {
        (eval(&b, row).await == Value::Bool(false)).then_some(())
    })
    .await;
    b.close().await.expect("close browser");
    relay.relay.drain("test").await;
    sink.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_page_behind_viewer_token_refuses_without_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    config.http.viewer_token = Some("view-secret".into());
    config.http.admin_token = Some("admin-secret".into());
    let relay = start_with(config, dir, Vec::new(), contrail_relay::Hooks::default()).await;
    let base = relay.http();
    let b = browser().await;
    b.goto(&format!("{base}/")).await.expect("open page");
    assert_eq!(
        eval(&b, "return !!document.getElementById('unauthorized');").await,
        true,
        "login page instead of the fleet"
    );
    assert_eq!(
        eval(&b, "return document.querySelectorAll('#relays').length;").await,
        0
    );
    let status = b
        .eval_async("const r = await fetch('/v1/page/state'); return r.status;")
        .await
        .expect("fetch");
    assert_eq!(status, 401, "data refused without the token");
    // A wrong token gets the login page again; the right one opens the page.
    b.goto(&format!("{base}/login?token=wrong"))
        .await
        .expect("login");
    assert_eq!(
        eval(&b, "return !!document.getElementById('unauthorized');").await,
        true
    );
    b.goto(&format!("{base}/login?token=view-secret"))
        .await
        .expect("login");
    poll_until_async(DEADLINE, "page live with the token", async || {
        (updates(&b).await >= 1).then_some(())
    })
    .await;
    let status = b
        .eval_async("const r = await fetch('/v1/page/state'); return r.status;")
        .await
        .expect("fetch");
    assert_eq!(status, 200);
    b.close().await.expect("close browser");
    // API clients: bearer viewer or admin token; /metrics stays open.
    let c = reqwest::Client::new();
    let get = |path: &str, token: Option<&str>| {
        let mut r = c.get(format!("{base}{path}"));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    assert_eq!(get("/v1/relays", None).await.expect("get").status(), 401);
    assert_eq!(get("/v1/drones", None).await.expect("get").status(), 401);
    assert_eq!(
        get("/v1/relays", Some("nope")).await.expect("get").status(),
        401
    );
    assert_eq!(
        get("/v1/relays", Some("view-secret"))
            .await
            .expect("get")
            .status(),
        200
    );
    assert_eq!(
        get("/v1/drones", Some("admin-secret"))
            .await
            .expect("get")
            .status(),
        200
    );
    assert_eq!(get("/metrics", None).await.expect("get").status(), 200);
    relay.relay.drain("test").await;
}
