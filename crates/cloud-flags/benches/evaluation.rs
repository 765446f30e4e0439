//! `cargo bench -p cloud-flags --bench evaluation`
//!
//! - `is_enabled` / `variant` on a tenant-sticky flexible rollout with 100 flags loaded
//!   (bench/flags/features-100.json), through our `FlagClient` and through raw yggdrasil in the
//!   same run, over 1,024 rotating tenant contexts;
//! - replacing a 1,000-flag state (parse + compile + swap + audit diff);
//! - evaluation latency p50/p99 in steady state vs while another thread replaces the
//!   1,000-flag state in a loop (printed as `update-p99:` lines);
//! - our overhead over raw yggdrasil once more, measured in interleaved pairs so that the VM's
//!   drift cancels out (printed as `paired:` lines; see `paired_overhead`). With `PAIRED_ONLY=1`
//!   only these lines.
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cloud_flags::{FlagClient, FlagContext, FlagKey};
use criterion::{Criterion, Throughput};
use serde_json::json;
use unleash_types::client_features::{ClientFeatures, Context};
use unleash_yggdrasil::EngineState;

const FLAG: FlagKey = FlagKey::new("bench.flag-042");

fn features_100() -> Vec<u8> {
    std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../bench/flags/features-100.json"
    ))
    .unwrap()
}

fn features_n(n: usize, rollout: u32) -> Vec<u8> {
    let features: Vec<_> = (0..n)
        .map(|i| {
            let name = format!("bench.flag-{i:04}");
            json!({"name": name, "enabled": true, "strategies": [{"name": "flexibleRollout",
                "parameters": {"rollout": rollout.to_string(), "stickiness": "tenantId", "groupId": name},
                "constraints": [{"contextName": "environment", "operator": "IN", "values": ["production"]}],
                "variants": [{"name": "stable", "weight": 900, "weightType": "variable", "stickiness": "tenantId"},
                             {"name": "canary", "weight": 100, "weightType": "variable", "stickiness": "tenantId"}]}]})
        })
        .collect();
    serde_json::to_vec(&json!({"version": 2, "features": features})).unwrap()
}

fn ours_contexts() -> Vec<FlagContext> {
    (0..1024)
        .map(|i| {
            FlagContext::new()
                .with_user_id(format!("user-{i}"))
                .with_tenant_id(format!("tenant-{i}"))
                .with_environment("production")
        })
        .collect()
}

fn raw_contexts() -> Vec<Context> {
    (0..1024)
        .map(|i| Context {
            user_id: Some(format!("user-{i}")),
            environment: Some("production".into()),
            properties: Some(HashMap::from([(
                "tenantId".to_string(),
                format!("tenant-{i}"),
            )])),
            ..Context::default()
        })
        .collect()
}

/// Our client and raw yggdrasil on the same 100 flags, with the same 1,024 contexts each.
struct Subjects {
    client: FlagClient,
    raw: EngineState,
    ours_ctx: Vec<FlagContext>,
    raw_ctx: Vec<Context>,
}

fn subjects() -> Subjects {
    let body = features_100();
    let client = FlagClient::from_features_json(&body).unwrap();
    let raw = EngineState::default();
    let features: ClientFeatures = serde_json::from_slice(&body).unwrap();
    raw.apply_client_features(features);
    let ours_ctx = ours_contexts();
    let raw_ctx = raw_contexts();
    // Same answers from both, or the comparison is meaningless.
    for (o, r) in ours_ctx.iter().zip(&raw_ctx) {
        assert_eq!(
            client.is_enabled(FLAG, o),
            raw.is_enabled(FLAG.name(), r, &None)
        );
        assert_eq!(
            client.variant(FLAG, o).name,
            raw.get_variant(FLAG.name(), r, &None).name
        );
    }
    Subjects {
        client,
        raw,
        ours_ctx,
        raw_ctx,
    }
}

fn evaluation(c: &mut Criterion, subjects: &Subjects) {
    let Subjects {
        client,
        raw,
        ours_ctx,
        raw_ctx,
    } = subjects;

    let mut group = c.benchmark_group("is_enabled");
    group.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    group.bench_function("cloud_flags", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            black_box(client.is_enabled(FLAG, black_box(&ours_ctx[i])))
        })
    });
    group.bench_function("raw_yggdrasil", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            black_box(raw.is_enabled(FLAG.name(), black_box(&raw_ctx[i]), &None))
        })
    });
    group.finish();

    let mut group = c.benchmark_group("variant");
    group.throughput(Throughput::Elements(1));
    group.bench_function("cloud_flags", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            black_box(client.variant(FLAG, black_box(&ours_ctx[i])))
        })
    });
    group.bench_function("raw_yggdrasil", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            black_box(raw.get_variant(FLAG.name(), black_box(&raw_ctx[i]), &None))
        })
    });
    group.finish();
}

fn state_update(c: &mut Criterion) {
    let a = features_n(1000, 25);
    let b = features_n(1000, 30);
    let client = FlagClient::from_features_json(&a).unwrap();
    let mut group = c.benchmark_group("state_update");
    group.sample_size(10);
    let mut flip = false;
    group.bench_function("replace_1000_flags", |bench| {
        bench.iter(|| {
            flip = !flip;
            client
                .apply_features_json(if flip { &b } else { &a })
                .unwrap()
        })
    });
    group.finish();
}

/// Per-evaluation latency percentiles (ns), timing batches of 64 evaluations.
fn latencies(client: &FlagClient, ctx: &[FlagContext], duration: Duration) -> (f64, f64, usize) {
    let flag = FlagKey::new("bench.flag-0420");
    let mut samples = Vec::with_capacity(1 << 20);
    let end = Instant::now() + duration;
    let mut i = 0usize;
    while Instant::now() < end {
        let t = Instant::now();
        for _ in 0..64 {
            i = (i + 1) & 1023;
            black_box(client.is_enabled(flag, &ctx[i]));
        }
        samples.push(t.elapsed().as_nanos() as f64 / 64.0);
    }
    samples.sort_by(f64::total_cmp);
    let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    (pct(0.50), pct(0.99), samples.len() * 64)
}

fn update_p99() {
    let a = Arc::new(features_n(1000, 25));
    let b = Arc::new(features_n(1000, 30));
    let client = FlagClient::from_features_json(&a).unwrap();
    let ctx = ours_contexts();
    let seconds = Duration::from_secs(3);

    let (p50, p99, n) = latencies(&client, &ctx, seconds);
    println!("update-p99: steady        p50 {p50:.0} ns  p99 {p99:.0} ns  ({n} evaluations)");

    let stop = Arc::new(AtomicBool::new(false));
    let updates = Arc::new(AtomicU64::new(0));
    let update_ns = Arc::new(AtomicU64::new(0));
    let updater = {
        let (client, stop, updates, update_ns, a, b) = (
            client.clone(),
            stop.clone(),
            updates.clone(),
            update_ns.clone(),
            a.clone(),
            b.clone(),
        );
        std::thread::spawn(move || {
            let mut flip = false;
            while !stop.load(Ordering::Relaxed) {
                flip = !flip;
                let t = Instant::now();
                client
                    .apply_features_json(if flip { &b } else { &a })
                    .unwrap();
                update_ns.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
                updates.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let (p50u, p99u, nu) = latencies(&client, &ctx, seconds);
    stop.store(true, Ordering::Relaxed);
    updater.join().unwrap();
    let count = updates.load(Ordering::Relaxed).max(1);
    let mean_ms = update_ns.load(Ordering::Relaxed) as f64 / count as f64 / 1e6;
    println!(
        "update-p99: during updates p50 {p50u:.0} ns  p99 {p99u:.0} ns  ({nu} evaluations, {count} updates of 1000 flags, mean update {mean_ms:.1} ms)"
    );
    println!("update-p99: p99 ratio during/steady = {:.2}", p99u / p99);
}

/// ns per evaluation of `evaluate` over one block of 4,096 rotating contexts.
fn block_ns(mut evaluate: impl FnMut(usize)) -> f64 {
    const BLOCK: usize = 4096;
    let t = Instant::now();
    for i in 0..BLOCK {
        evaluate(i & 1023);
    }
    t.elapsed().as_nanos() as f64 / BLOCK as f64
}

/// Our overhead over raw yggdrasil, measured in pairs: each round times one block of ours and
/// one block of raw right after each other (in alternating order), and the figure is the median
/// of the rounds' ratios. On a shared VM whose speed drifts by tens of percent within seconds,
/// criterion's one-after-the-other runs can put the drift into the ratio; a drift slower than a
/// round (about 2 ms) cancels out of each pair. Printed as `paired:` lines.
fn paired_overhead(s: &Subjects) {
    paired(
        "is_enabled",
        |i| {
            black_box(s.client.is_enabled(FLAG, black_box(&s.ours_ctx[i])));
        },
        |i| {
            black_box(
                s.raw
                    .is_enabled(FLAG.name(), black_box(&s.raw_ctx[i]), &None),
            );
        },
    );
    paired(
        "variant",
        |i| {
            black_box(s.client.variant(FLAG, black_box(&s.ours_ctx[i])));
        },
        |i| {
            black_box(
                s.raw
                    .get_variant(FLAG.name(), black_box(&s.raw_ctx[i]), &None),
            );
        },
    );
}

/// `PAIRED_SECS` seconds per operation (default 3): `bench/flags/run.sh` asks for more.
fn paired_duration() -> Duration {
    let secs = std::env::var("PAIRED_SECS")
        .ok()
        .map(|v| {
            v.parse::<u64>()
                .expect("PAIRED_SECS is a whole number of seconds")
        })
        .unwrap_or(3);
    Duration::from_secs(secs)
}

fn paired(name: &str, mut ours: impl FnMut(usize), mut raw: impl FnMut(usize)) {
    let end = Instant::now() + paired_duration();
    let (mut ours_ns, mut raw_ns, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let mut round = 0usize;
    while Instant::now() < end {
        let (o, r) = if round.is_multiple_of(2) {
            let o = block_ns(&mut ours);
            (o, block_ns(&mut raw))
        } else {
            let r = block_ns(&mut raw);
            (block_ns(&mut ours), r)
        };
        ours_ns.push(o);
        raw_ns.push(r);
        ratios.push(o / r);
        round += 1;
    }
    for v in [&mut ours_ns, &mut raw_ns, &mut ratios] {
        v.sort_by(f64::total_cmp);
    }
    let at = |v: &[f64], q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
    let ratio = at(&ratios, 0.5);
    println!(
        "paired: {name} ours/raw = {ratio:.3} ({:+.1}%; quartiles {:.3}-{:.3} over {round} rounds), medians ours {:.1} ns, raw {:.1} ns",
        (ratio - 1.0) * 100.0,
        at(&ratios, 0.25),
        at(&ratios, 0.75),
        at(&ours_ns, 0.5),
        at(&raw_ns, 0.5),
    );
}

fn main() {
    let subjects = subjects();
    // `PAIRED_ONLY=1`: only the paired lines, for bench/flags/run.sh's extra processes (each
    // process draws its own hash seeds, see there).
    if std::env::var_os("PAIRED_ONLY").is_some() {
        paired_overhead(&subjects);
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    evaluation(&mut c, &subjects);
    state_update(&mut c);
    c.final_summary();
    if std::env::args().all(|a| a != "--list") {
        paired_overhead(&subjects);
        update_p99();
    }
}
