// The Node SDK anchor of the cloud-flags benchmark (docs/benchmarks.md, "## cloud-flags"):
// npm `unleash-client` (installed by `cargo xtask tools` into the tools cache) evaluating the
// same 100 flags (bench/flags/features-100.json, tenant-sticky flexible rollout with variants)
// for the same 1,024 rotating tenant contexts, offline from a bootstrap.
//
//   node bench/flags/node-sdk.js <npm prefix of unleash-client>
//
// Prints one JSON line per operation: {"op", "evals", "seconds", "evals_per_sec", "ns_per_eval"}.
'use strict';

const fs = require('node:fs');
const path = require('node:path');

const prefix = process.argv[2];
if (!prefix) {
  console.error('usage: node bench/flags/node-sdk.js <npm prefix holding node_modules/unleash-client>');
  process.exit(2);
}
const { Unleash, InMemStorageProvider } = require(path.join(prefix, 'node_modules', 'unleash-client'));
const features = JSON.parse(fs.readFileSync(path.join(__dirname, 'features-100.json'), 'utf8'));

const FLAG = 'bench.flag-042';
const contexts = [];
for (let i = 0; i < 1024; i++) {
  contexts.push({ userId: `user-${i}`, environment: 'production', properties: { tenantId: `tenant-${i}` } });
}

const unleash = new Unleash({
  url: 'http://127.0.0.1:9/api/', // never contacted: refresh and metrics are disabled
  appName: 'bench',
  refreshInterval: 0,
  disableMetrics: true,
  disableAutoStart: false,
  storageProvider: new InMemStorageProvider(),
  bootstrap: { data: features.features },
  bootstrapOverride: true,
});
unleash.on('error', () => {});
unleash.on('warn', () => {});

function measure(op, fn, seconds) {
  // Warm up, then run for about `seconds`.
  for (let i = 0; i < 200000; i++) fn(contexts[i & 1023]);
  let evals = 0;
  const start = process.hrtime.bigint();
  const budget = BigInt(Math.round(seconds * 1e9));
  let sink = 0;
  for (;;) {
    for (let i = 0; i < 100000; i++) {
      const r = fn(contexts[i & 1023]);
      if (r === true || (r && r.enabled)) sink++;
    }
    evals += 100000;
    if (process.hrtime.bigint() - start >= budget) break;
  }
  const elapsed = Number(process.hrtime.bigint() - start) / 1e9;
  console.log(JSON.stringify({ op, evals, seconds: +elapsed.toFixed(3), evals_per_sec: Math.round(evals / elapsed), ns_per_eval: +((elapsed * 1e9) / evals).toFixed(1), sink }));
}

unleash.on('ready', () => {
  const on = contexts.filter((c) => unleash.isEnabled(FLAG, c)).length;
  if (on === 0 || on === contexts.length) {
    console.error(`unexpected: ${on} of ${contexts.length} contexts enabled; the bootstrap did not load`);
    process.exit(1);
  }
  measure('is_enabled', (c) => unleash.isEnabled(FLAG, c), 3);
  measure('variant', (c) => unleash.getVariant(FLAG, c), 3);
  unleash.destroy();
  process.exit(0);
});
