//! `POST /v1/cdc/debezium` behind the ingest tokens: a bearer token, or a Standard Webhooks
//! signature as Debezium Server's HTTP sink makes one with `whsec_<base64 of the token's
//! SHA-256>` as its secret; anything else is refused before a record is taken.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::time::{SystemTime, UNIX_EPOCH};
use toctou_collector::{secured_http_router, ChannelSink, ReceiverAuth, Receivers, Tokens};
use toctou_schema::Event;
use tower::ServiceExt;

const TOKEN: &str = "ingest-token-0123456789abcdef";

fn record() -> String {
    serde_json::json!({
        "before": null,
        "after": {"id": 7, "stock": 3, "version": 12},
        "source": {"connector": "postgresql", "db": "shop", "schema": "public",
            "table": "inventory", "txId": 900, "lsn": 4242, "ts_us": 1_733_580_000_123_456_u64},
        "op": "u", "ts_ms": 1
    })
    .to_string()
}

/// The signature Debezium Server sends: HMAC-SHA256 of `id.timestamp.body`, keyed by the
/// secret's bytes (here the token's digest), base64, after `v1,`.
fn sign(id: &str, timestamp: u64, body: &str) -> String {
    let secret = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(Sha256::digest(TOKEN.as_bytes()))
    );
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn a_bearer_token_or_a_webhook_signature_and_nothing_else() {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Event>>(16);
    let receivers = Receivers::new(
        std::sync::Arc::new(ChannelSink::new(tx)),
        Default::default(),
    );
    let auth = ReceiverAuth {
        otlp: Some(Tokens::parse_list(TOKEN, "test").unwrap()),
        audit: None,
    };
    let router = secured_http_router(receivers.clone(), &auth);
    let send = |headers: Vec<(&'static str, String)>, body: String| {
        let router = router.clone();
        async move {
            let mut req =
                Request::post("/v1/cdc/debezium").header("content-type", "application/json");
            for (k, v) in headers {
                req = req.header(k, v);
            }
            router
                .oneshot(req.body(Body::from(body)).unwrap())
                .await
                .unwrap()
                .status()
        }
    };
    let body = record();
    let t = now();
    let signed = |id: &str, t: u64, sig: String| {
        vec![
            ("webhook-id", id.to_string()),
            ("webhook-timestamp", t.to_string()),
            ("webhook-signature", sig),
        ]
    };

    assert_eq!(
        send(
            vec![("authorization", format!("Bearer {TOKEN}"))],
            body.clone()
        )
        .await,
        StatusCode::OK
    );
    assert_eq!(
        send(signed("msg_1", t, sign("msg_1", t, &body)), body.clone()).await,
        StatusCode::OK
    );
    // Several signatures (a secret being rotated): one good one is enough.
    let two = format!("v1,AAAA {}", sign("msg_2", t, &body));
    assert_eq!(
        send(signed("msg_2", t, two), body.clone()).await,
        StatusCode::OK
    );
    for batch in 0..3 {
        let events = rx.try_recv().unwrap_or_else(|_| panic!("batch {batch}"));
        let Event::Audit(a) = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!(a.resource, "public.inventory/7");
        assert_eq!(a.version.as_deref(), Some("12"));
    }

    // Refused: no credential, a wrong token, a signature of another body or id, a stale or
    // future timestamp, a signature keyed by the token itself rather than its digest.
    let refused = [
        vec![],
        vec![("authorization", "Bearer not-the-token-at-all".to_string())],
        signed("msg_3", t, sign("msg_3", t, "{}")),
        signed("msg_4", t, sign("msg_5", t, &body)),
        signed("msg_6", t - 600, sign("msg_6", t - 600, &body)),
        signed("msg_7", t + 600, sign("msg_7", t + 600, &body)),
        signed("msg_8", t, {
            let mut mac = Hmac::<Sha256>::new_from_slice(TOKEN.as_bytes()).unwrap();
            mac.update(format!("msg_8.{t}.{body}").as_bytes());
            format!(
                "v1,{}",
                base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
            )
        }),
        signed("msg_9", t, "v2,garbage".into()),
    ];
    let n = refused.len();
    for headers in refused {
        let what = format!("{headers:?}");
        assert_eq!(
            send(headers, body.clone()).await,
            StatusCode::UNAUTHORIZED,
            "{what}"
        );
    }
    assert!(rx.try_recv().is_err(), "a refused record was taken");
    assert_eq!(
        receivers
            .metrics()
            .rejected(toctou_collector::RejectReason::Unauthenticated),
        n as u64
    );
}
