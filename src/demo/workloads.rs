//! The demo's racing workloads. Each is a small, genuinely concurrent program over shared
//! versioned state: workers check, wait (the race window), then act, while other workers
//! and admin tasks change the same state. Nothing is scripted: the races happen or not, and
//! each workload records what actually happened (its ground truth) from the state itself.

use super::telemetry::{finish, Service};
use opentelemetry::KeyValue;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use toctou_schema::conventions as c;

/// A row of a versioned store: every committed write bumps the version.
#[derive(Clone, Copy, Debug, Default)]
pub struct Row {
    pub value: i64,
    pub version: u64,
    pub exists: bool,
    pub finalized: bool,
}

/// A versioned key-value store that writes an audit record for each commit, like a database
/// with change data capture. The audit is emitted under the row lock so that commit order,
/// version order and audit time agree.
pub struct Store {
    rows: Mutex<HashMap<String, Row>>,
    audit: Arc<Service>,
}

impl Store {
    pub fn new(audit: Arc<Service>) -> Store {
        Store {
            rows: Mutex::new(HashMap::new()),
            audit,
        }
    }

    pub fn read(&self, key: &str) -> Row {
        self.lock().get(key).copied().unwrap_or_default()
    }

    /// Applies `f` to the row and commits if it returns true. Returns the pre-image and
    /// whether the write committed.
    pub fn write(
        &self,
        key: &str,
        request_id: &str,
        action: &'static str,
        f: impl FnOnce(&mut Row) -> bool,
    ) -> (Row, bool) {
        let ((), before, committed) = self.write_in(key, request_id, action, || (), f);
        (before, committed)
    }

    /// Like [`Store::write`], but calls `start` (which starts the use span) under the row
    /// lock: the store serializes writes, so the order in which use spans start is the
    /// commit order, the order the ground truth is counted in.
    pub fn write_in<S>(
        &self,
        key: &str,
        request_id: &str,
        action: &'static str,
        start: impl FnOnce() -> S,
        f: impl FnOnce(&mut Row) -> bool,
    ) -> (S, Row, bool) {
        let mut rows = self.lock();
        let started = start();
        let row = rows.entry(key.to_string()).or_default();
        let before = *row;
        if !f(row) {
            return (started, before, false);
        }
        row.version += 1;
        self.audit.audit(
            SystemTime::now(),
            vec![
                (c::AUDIT_ACTION, action.to_string()),
                (c::RESOURCE, key.to_string()),
                (c::RESOURCE_VERSION, row.version.to_string()),
                (c::REQUEST_ID, request_id.to_string()),
            ],
        );
        (started, before, true)
    }

    pub fn snapshot(&self) -> HashMap<String, Row> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Row>> {
        self.rows.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What really happened, counted by the workloads from the state they raced on, in the
/// kinds toctou reports.
#[derive(Default)]
pub struct Truth {
    pub stale_check: AtomicU64,
    pub duplicate_use: AtomicU64,
    pub unchecked_use: AtomicU64,
    pub authz_drift: AtomicU64,
    pub partial_create: AtomicU64,
    pub orphan_check: AtomicU64,
    pub prevented: AtomicU64,
    /// Units sold that were not in stock (not a finding kind: the business impact).
    pub oversold: AtomicU64,
}

impl Truth {
    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Knobs shared by every workload.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    pub workers: usize,
    /// Longest wait between a check and its use.
    pub race_window: Duration,
    /// Pause between two requests of one worker.
    pub pause: Duration,
    pub until: Instant,
}

fn rng() -> StdRng {
    StdRng::from_entropy()
}

async fn sleep_upto(rng: &mut StdRng, max: Duration) {
    let ms = max.as_millis().max(1) as u64;
    tokio::time::sleep(Duration::from_millis(rng.gen_range(0..=ms))).await;
}

fn kv(key: &'static str, value: impl Into<opentelemetry::Value>) -> KeyValue {
    KeyValue::new(key, value)
}

fn check_attrs(resource: &str, version: u64) -> Vec<KeyValue> {
    vec![
        kv(c::PHASE, "check"),
        kv(c::RESOURCE, resource.to_string()),
        kv(c::RESOURCE_VERSION, version as i64),
    ]
}

fn use_attrs(resource: &str, operation: &'static str) -> Vec<KeyValue> {
    vec![
        kv(c::PHASE, "use"),
        kv(c::RESOURCE, resource.to_string()),
        kv(c::OPERATION, operation),
    ]
}

/// Inventory: buyers check stock, then reserve. Most reserve blindly (oversells when another
/// buyer got there first); some compare-and-swap on the version (the race is caught); some
/// abandon their cart after the check (orphans); a legacy sync job writes without checking.
pub async fn inventory(api: Arc<Service>, db: Arc<Store>, truth: Arc<Truth>, load: Load) {
    const SKUS: u64 = 12;
    for n in 0..SKUS {
        // Opening stock, written as an ordinary update so it is no create to finalize.
        db.write(
            &format!("inventory/sku-{n}"),
            "opening-stock",
            "update",
            |row| {
                row.value = 25;
                true
            },
        );
    }
    let mut workers = Vec::new();
    for _ in 0..load.workers {
        let (api, db, truth) = (api.clone(), db.clone(), truth.clone());
        workers.push(tokio::spawn(async move {
            let mut rng = rng();
            while Instant::now() < load.until {
                let sku = format!("inventory/sku-{}", rng.gen_range(0..SKUS));
                let req = api.request("POST /cart/reserve");
                let check = api.span(&req, "check stock", vec![]);
                let seen = db.read(&sku);
                let allow = seen.value > 0;
                let mut attrs = check_attrs(&sku, seen.version);
                attrs.push(kv(c::CHECK_DECISION, if allow { "allow" } else { "deny" }));
                attrs.push(kv(c::CHECK_SOURCE, "primary"));
                finish(check, attrs);
                if !allow {
                    req.end();
                    sleep_upto(&mut rng, load.pause).await;
                    continue;
                }
                if rng.gen_bool(0.05) {
                    // The buyer walks away: an allowing check that no use follows.
                    Truth::add(&truth.orphan_check);
                    req.end();
                    sleep_upto(&mut rng, load.pause).await;
                    continue;
                }
                sleep_upto(&mut rng, load.race_window).await;
                let compare_and_swap = rng.gen_bool(0.3);
                let (span, before, committed) = db.write_in(
                    &sku,
                    &req.request_id,
                    "update",
                    || api.span(&req, "reserve", vec![]),
                    |row| {
                        if compare_and_swap && row.version != seen.version {
                            return false;
                        }
                        row.value -= 1;
                        true
                    },
                );
                if committed && before.value <= 0 {
                    Truth::add(&truth.oversold);
                }
                let mut attrs = use_attrs(&sku, "reserve");
                attrs.push(kv(c::RESOURCE_VERSION, before.version as i64));
                if committed {
                    if before.version != seen.version {
                        Truth::add(&truth.stale_check);
                    }
                    attrs.push(kv(c::USE_OUTCOME, "ok"));
                } else {
                    Truth::add(&truth.prevented);
                    attrs.push(kv(c::USE_OUTCOME, "conflict"));
                }
                finish(span, attrs);
                req.end();
                sleep_upto(&mut rng, load.pause).await;
            }
        }));
    }
    // A legacy sync job that restocks without checking anything first.
    let sync = {
        let (api, db, truth) = (api.clone(), db.clone(), truth.clone());
        tokio::spawn(async move {
            let mut rng = rng();
            while Instant::now() < load.until {
                tokio::time::sleep(load.pause * 10 + Duration::from_millis(200)).await;
                let sku = format!("inventory/sku-{}", rng.gen_range(0..SKUS));
                let req = api.request("legacy restock");
                let (span, before, _) = db.write_in(
                    &sku,
                    &req.request_id,
                    "update",
                    || api.span(&req, "restock", vec![]),
                    |row| {
                        row.value += 20;
                        true
                    },
                );
                let mut attrs = use_attrs(&sku, "restock");
                attrs.push(kv(c::RESOURCE_VERSION, before.version as i64));
                finish(span, attrs);
                Truth::add(&truth.unchecked_use);
                req.end();
            }
        })
    };
    for w in workers {
        let _ = w.await;
    }
    let _ = sync.await;
}

/// Payment webhooks: the provider redelivers events; handlers check that the idempotency key
/// is unused, then charge. Concurrent redeliveries both pass the check: double charges.
pub async fn payments(api: Arc<Service>, db: Arc<Store>, truth: Arc<Truth>, load: Load) {
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..load.workers {
        let (api, db, truth, next) = (api.clone(), db.clone(), truth.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut rng = rng();
            while Instant::now() < load.until {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let key = format!("evt_{n:06}");
                let deliveries = rng.gen_range(1..=3);
                let mut handlers = Vec::new();
                for _ in 0..deliveries {
                    let (api, db, truth, key) =
                        (api.clone(), db.clone(), truth.clone(), key.clone());
                    let window = load.race_window;
                    let delay = Duration::from_millis(rng.gen_range(0..=window.as_millis() as u64));
                    handlers.push(tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        deliver(&api, &db, &truth, &key, window).await;
                    }));
                }
                for h in handlers {
                    let _ = h.await;
                }
                sleep_upto(&mut rng, load.pause).await;
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
}

async fn deliver(api: &Service, db: &Store, truth: &Truth, key: &str, window: Duration) {
    let mut rng = rng();
    let resource = format!("payments/{key}");
    let req = api.request("POST /webhooks/payment");
    let check = api.span(&req, "idempotency check", vec![]);
    let seen = db.read(&resource);
    let unused = seen.value == 0;
    let mut attrs = check_attrs(&resource, seen.version);
    attrs.push(kv(c::IDEMPOTENCY_KEY, key.to_string()));
    attrs.push(kv(c::CHECK_DECISION, if unused { "allow" } else { "deny" }));
    finish(check, attrs);
    if !unused {
        req.end();
        return;
    }
    sleep_upto(&mut rng, window).await;
    let (span, before, _) = db.write_in(
        &resource,
        &req.request_id,
        "update",
        || api.span(&req, "charge", vec![]),
        |row| {
            row.value += 1;
            true
        },
    );
    if before.value > 0 {
        Truth::add(&truth.duplicate_use);
    }
    let mut attrs = use_attrs(&resource, "charge");
    attrs.push(kv(c::IDEMPOTENCY_KEY, key.to_string()));
    attrs.push(kv(c::RESOURCE_VERSION, before.version as i64));
    finish(span, attrs);
    req.end();
}

/// Document editing under an access policy that an admin keeps changing: a request is
/// authorized, then the grant is revoked before the edit. Half the handlers re-check at the
/// write and are denied (403); the others edit anyway.
pub async fn authz(
    api: Arc<Service>,
    iam: Arc<Service>,
    db: Arc<Store>,
    truth: Arc<Truth>,
    load: Load,
) {
    const USERS: usize = 6;
    const POLICY: &str = "policies/docs-acl";
    // (policy version, which users are allowed)
    let policy = Arc::new(Mutex::new((1u64, [true; USERS])));
    let admin = {
        let (iam, policy) = (iam.clone(), policy.clone());
        tokio::spawn(async move {
            let mut rng = rng();
            while Instant::now() < load.until {
                tokio::time::sleep(load.race_window * 4 + Duration::from_millis(50)).await;
                let mut p = policy.lock().unwrap_or_else(|e| e.into_inner());
                let user = rng.gen_range(0..USERS);
                p.1[user] = !p.1[user];
                p.0 += 1;
                iam.audit(
                    SystemTime::now(),
                    vec![
                        (c::AUDIT_ACTION, "policy_change".to_string()),
                        (c::RESOURCE, POLICY.to_string()),
                        (c::RESOURCE_VERSION, p.0.to_string()),
                        (c::ACTOR, "admin".to_string()),
                    ],
                );
            }
        })
    };
    let mut workers = Vec::new();
    for _ in 0..load.workers {
        let (api, db, truth, policy) = (api.clone(), db.clone(), truth.clone(), policy.clone());
        workers.push(tokio::spawn(async move {
            let mut rng = rng();
            while Instant::now() < load.until {
                let user = rng.gen_range(0..USERS);
                let doc = format!("docs/doc-{}", rng.gen_range(0..50));
                let req = api.request("PUT /docs/:id");
                let check = api.span(&req, "authorize", vec![]);
                let (policy_version, allowed) = {
                    let p = policy.lock().unwrap_or_else(|e| e.into_inner());
                    (p.0, p.1[user])
                };
                let seen = db.read(&doc);
                let mut attrs = check_attrs(&doc, seen.version);
                attrs.push(kv(
                    c::CHECK_DECISION,
                    if allowed { "allow" } else { "deny" },
                ));
                attrs.push(kv(c::POLICY, POLICY));
                attrs.push(kv(c::POLICY_VERSION, policy_version.to_string()));
                attrs.push(kv(c::ACTOR, format!("user-{user}")));
                finish(check, attrs);
                if !allowed {
                    req.end();
                    sleep_upto(&mut rng, load.pause).await;
                    continue;
                }
                sleep_upto(&mut rng, load.race_window).await;
                let recheck = rng.gen_bool(0.5);
                {
                    // The policy lock is held across the whole edit so that the policy in force
                    // when the use span starts is the one in force when the edit commits.
                    let p = policy.lock().unwrap_or_else(|e| e.into_inner());
                    let span = api.span(&req, "edit", vec![]);
                    let mut attrs = use_attrs(&doc, "edit");
                    if recheck && !p.1[user] {
                        attrs.push(kv(c::USE_OUTCOME, "error"));
                        attrs.push(kv(c::HTTP_RESPONSE_STATUS_CODE, 403i64));
                        attrs.push(kv(c::RESOURCE_VERSION, db.read(&doc).version as i64));
                        Truth::add(&truth.authz_drift);
                    } else {
                        let (before, _) = db.write(&doc, &req.request_id, "update", |row| {
                            row.value += 1;
                            true
                        });
                        attrs.push(kv(c::RESOURCE_VERSION, before.version as i64));
                        if p.0 != policy_version {
                            Truth::add(&truth.authz_drift);
                        } else if before.version != seen.version {
                            Truth::add(&truth.stale_check);
                        }
                    }
                    finish(span, attrs);
                }
                req.end();
                sleep_upto(&mut rng, load.pause).await;
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    let _ = admin.await;
}

/// A controller with two replicas reconciling the same pods: each checks that the pod has no
/// claim, then creates one and provisions it. Both replicas can pass the check (duplicate
/// creates), and a replica that dies mid-provisioning leaves a claim never finalized.
pub async fn claims(replicas: [Arc<Service>; 2], db: Arc<Store>, truth: Arc<Truth>, load: Load) {
    let mut pod = 0u64;
    let mut rng = rng();
    let mut running = Vec::new();
    while Instant::now() < load.until {
        let resource = format!("claims/default/pod-{pod:05}");
        pod += 1;
        for replica in &replicas {
            let (replica, db, truth, resource) =
                (replica.clone(), db.clone(), truth.clone(), resource.clone());
            let window = load.race_window;
            running.push(tokio::spawn(async move {
                reconcile(&replica, &db, &truth, &resource, window).await;
            }));
        }
        sleep_upto(&mut rng, load.pause * 4).await;
        running.retain(|h| !h.is_finished());
    }
    for h in running {
        let _ = h.await;
    }
    // A claim whose last create was never followed by a finalize is half-made.
    for (key, row) in db.snapshot() {
        if key.starts_with("claims/") && row.exists && !row.finalized {
            Truth::add(&truth.partial_create);
        }
    }
}

async fn reconcile(replica: &Service, db: &Store, truth: &Truth, resource: &str, window: Duration) {
    let mut rng = rng();
    sleep_upto(&mut rng, window).await;
    let req = replica.request("reconcile pod");
    let check = replica.span(&req, "claim exists?", vec![]);
    let seen = db.read(resource);
    let absent = !seen.exists;
    let mut attrs = check_attrs(resource, seen.version);
    attrs.push(kv(c::CHECK_DECISION, if absent { "allow" } else { "deny" }));
    finish(check, attrs);
    if !absent {
        req.end();
        return;
    }
    sleep_upto(&mut rng, window).await;
    // The store's create is an upsert: a second create silently replaces the first claim.
    let (span, before, _) = db.write_in(
        resource,
        &req.request_id,
        "create",
        || replica.span(&req, "create claim", vec![]),
        |row| {
            row.exists = true;
            row.finalized = false;
            true
        },
    );
    if before.exists {
        Truth::add(&truth.duplicate_use);
    }
    let mut attrs = use_attrs(resource, "create");
    attrs.push(kv(c::RESOURCE_VERSION, before.version as i64));
    finish(span, attrs);
    if rng.gen_bool(0.1) {
        // The replica dies while provisioning: no finalize ever comes.
        req.end();
        return;
    }
    sleep_upto(&mut rng, window).await;
    db.write(resource, &req.request_id, "finalize", |row| {
        row.finalized = true;
        true
    });
    req.end();
}

/// Quotes priced from a cache: the check validates the cached price, a writer updates the
/// primary, and the order is placed at a price that is no longer current.
pub async fn cache(api: Arc<Service>, db: Arc<Store>, truth: Arc<Truth>, load: Load) {
    const ITEMS: u64 = 8;
    let cached: Arc<Mutex<HashMap<String, Row>>> = Arc::new(Mutex::new(HashMap::new()));
    let writer = {
        let (api, db) = (api.clone(), db.clone());
        tokio::spawn(async move {
            let mut rng = rng();
            while Instant::now() < load.until {
                tokio::time::sleep(load.race_window * 2 + Duration::from_millis(20)).await;
                let item = format!("prices/item-{}", rng.gen_range(0..ITEMS));
                let req = api.request("price update");
                db.write(&item, &req.request_id, "update", |row| {
                    row.value = rng.gen_range(100..200);
                    true
                });
                req.end();
            }
        })
    };
    let mut workers = Vec::new();
    for _ in 0..load.workers {
        let (api, db, truth, cached) = (api.clone(), db.clone(), truth.clone(), cached.clone());
        workers.push(tokio::spawn(async move {
            let mut rng = rng();
            while Instant::now() < load.until {
                let item = format!("prices/item-{}", rng.gen_range(0..ITEMS));
                let req = api.request("POST /quote");
                let check = api.span(&req, "validate cached price", vec![]);
                let seen = {
                    let mut cache = cached.lock().unwrap_or_else(|e| e.into_inner());
                    // The cache refreshes lazily: one read in four goes to the primary.
                    if rng.gen_bool(0.25) || !cache.contains_key(&item) {
                        cache.insert(item.clone(), db.read(&item));
                    }
                    cache[&item]
                };
                let mut attrs = check_attrs(&item, seen.version);
                attrs.push(kv(c::CHECK_SOURCE, "cache"));
                finish(check, attrs);
                sleep_upto(&mut rng, load.race_window).await;
                let span = api.span(&req, "place order", vec![]);
                let current = db.read(&item);
                if current.version != seen.version {
                    Truth::add(&truth.stale_check);
                }
                let mut attrs = use_attrs(&item, "quote");
                attrs.push(kv(c::RESOURCE_VERSION, current.version as i64));
                finish(span, attrs);
                req.end();
                sleep_upto(&mut rng, load.pause).await;
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    let _ = writer.await;
}
