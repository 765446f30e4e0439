// Starts a real Unleash server (npm `unleash-server`, installed by `cargo xtask tools`) for the
// cloud-flags tests, on 127.0.0.1 only, against the PostgreSQL database in DATABASE_URL, with an
// admin token and a client token created at start (`initApiTokens`).
//
// Environment: UNLEASH_PREFIX (npm prefix holding node_modules/unleash-server), DATABASE_URL,
// PORT, ADMIN_TOKEN, CLIENT_TOKEN. Prints "UNLEASH READY <port>" once it serves requests.
'use strict';

const path = require('node:path');

function need(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`start-unleash: ${name} is not set`);
    process.exit(2);
  }
  return value;
}

const prefix = need('UNLEASH_PREFIX');
const databaseUrl = new URL(need('DATABASE_URL'));
const port = Number(need('PORT'));
const adminToken = need('ADMIN_TOKEN');
const clientToken = need('CLIENT_TOKEN');

const { pathToFileURL } = require('node:url');

// unleash-server 7 is an ES module: import it by the file its package.json names.
async function load() {
  const dir = path.join(prefix, 'node_modules', 'unleash-server');
  const pkg = require(path.join(dir, 'package.json'));
  const exp = pkg.exports;
  const main = (typeof exp === 'string' ? exp : exp && (exp['.'] || exp.import || exp.default)) || pkg.main;
  const mod = await import(pathToFileURL(path.join(dir, main)).href);
  return mod.start ? mod : mod.default;
}

load()
  .then((unleash) => unleash.start({
    db: {
      host: databaseUrl.hostname,
      port: Number(databaseUrl.port || 5432),
      user: decodeURIComponent(databaseUrl.username || 'postgres'),
      password: decodeURIComponent(databaseUrl.password || ''),
      database: databaseUrl.pathname.replace(/^\//, ''),
      ssl: false,
      pool: { min: 0, max: 4 },
    },
    server: { host: '127.0.0.1', port, enableRequestLogger: false },
    logLevel: 'warn',
    versionCheck: { enable: false },
    disableScheduler: false,
    authentication: {
      type: 'open-source',
      createAdminUser: false,
      initApiTokens: [
        { environment: '*', projects: ['*'], secret: adminToken, type: 'admin', tokenName: 'cloud-flags-test-admin' },
        { environment: 'development', projects: ['*'], secret: clientToken, type: 'backend', tokenName: 'cloud-flags-test-client' },
      ],
    },
  }))
  .then((instance) => {
    console.log(`UNLEASH READY ${port}`);
    const stop = () => instance.stop().then(() => process.exit(0), () => process.exit(1));
    process.on('SIGTERM', stop);
    process.on('SIGINT', stop);
  })
  .catch((err) => {
    console.error('start-unleash: failed to start:', err);
    process.exit(1);
  });
