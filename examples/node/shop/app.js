// The shop of examples/python/shop/app.py in Node.js: express and node-postgres, with no
// toctou code. Same HTTP API (for the endpoints below), same SQL (with $1 placeholders),
// same transactions, same think time between a check and its act, same JSON answers and
// status codes (200 done, 409 refused by the app's own check, 500 error), same schema: create
// it with `python examples/python/shop/app.py --dsn DSN --setup`.
//
//   POST /buy/<item_id>?qty=N      POST /buy_safe/<item_id>?qty=N
//   POST /redeem/<code>            POST /redeem_safe/<code>
//   POST /signup?email=E           POST /signup_safe?email=E
//   POST /flush                    export every span so far (untraced; the hammer calls it)
//
// The only tracing is OpenTelemetry's auto-instrumentation: http (a SERVER span per request,
// joining the caller's W3C `traceparent`; express's instrumentation gives it `http.route`,
// e.g. `/buy/:item_id`) and pg (a CLIENT span per statement, with its parameters in
// `db.postgresql.values` unless --no-params). Spans go over OTLP/HTTP protobuf to
// OTEL_EXPORTER_OTLP_ENDPOINT (the exporter appends /v1/traces).
//
//   $(scripts/otel-node path) examples/node/shop/app.js --dsn postgres://... --port 0
'use strict';

const { parseArgs } = require('node:util');

const { values: args } = parseArgs({
  options: {
    dsn: { type: 'string' },
    port: { type: 'string', default: process.env.PORT || '8000' },
    host: { type: 'string', default: '127.0.0.1' },
    'think-ms': { type: 'string', default: '5' },
    'no-params': { type: 'boolean', default: false },
    setup: { type: 'boolean', default: false },
  },
});
function usage(message) {
  process.stderr.write(`shop: ${message}\nusage: app.js --dsn DSN [--port N (0: a free one)] ` +
    '[--host H] [--think-ms MS] [--no-params]\n');
  process.exit(2);
}
if (args.setup) {
  usage('the schema is created by examples/python/shop/app.py --dsn DSN --setup');
}
if (!args.dsn) usage('--dsn is required');
const PORT = Number(args.port);
const THINK_MS = Number(args['think-ms']);
if (!Number.isInteger(PORT) || PORT < 0 || PORT > 65535) usage(`bad --port ${args.port}`);
if (!(THINK_MS >= 0)) usage(`bad --think-ms ${args['think-ms']}`);

// Tracing first: the instrumentations patch express and pg when they are required below.
const { NodeTracerProvider } = require('@opentelemetry/sdk-trace-node');
const { BatchSpanProcessor } = require('@opentelemetry/sdk-trace-base');
const { OTLPTraceExporter } = require('@opentelemetry/exporter-trace-otlp-proto');
const { resourceFromAttributes } = require('@opentelemetry/resources');
const { registerInstrumentations } = require('@opentelemetry/instrumentation');
const { HttpInstrumentation } = require('@opentelemetry/instrumentation-http');
const { ExpressInstrumentation } = require('@opentelemetry/instrumentation-express');
const { PgInstrumentation } = require('@opentelemetry/instrumentation-pg');

// Endpoint, headers etc. come from the standard OTEL_EXPORTER_OTLP_* variables.
const provider = new NodeTracerProvider({
  resource: resourceFromAttributes({ 'service.name': 'shop-node' }),
  spanProcessors: [new BatchSpanProcessor(new OTLPTraceExporter(), { scheduledDelayMillis: 100 })],
});
provider.register(); // the global provider, AsyncLocalStorage context, W3C traceparent
registerInstrumentations({
  tracerProvider: provider,
  instrumentations: [
    new HttpInstrumentation({
      ignoreIncomingRequestHook: (req) => (req.url || '').split('?')[0] === '/flush',
    }),
    new ExpressInstrumentation(),
    new PgInstrumentation({ enhancedDatabaseReporting: !args['no-params'] }),
  ],
});

const express = require('express');
const pg = require('pg');

// txid_current() is a bigint, which pg hands over as a string; the answers carry it as a
// JSON number, as app.py does (txids stay far below 2^53).
pg.types.setTypeParser(pg.types.builtins.INT8, (v) => Number(v));

const pool = new pg.Pool({ connectionString: args.dsn, max: 32 });

class Refused {
  constructor(reason) {
    this.reason = reason;
  }
}

class ValueError extends Error {
  get name() {
    return 'ValueError';
  }
}

/** A little work between the check and the act, as real code has; it widens the window.
 * (setTimeout waits at least 1 ms, so this is 1..THINK_MS ms where app.py's is 0..THINK_MS.) */
function think() {
  return new Promise((resolve) => setTimeout(resolve, Math.random() * THINK_MS));
}

/** Runs fn(client) in one BEGIN ... COMMIT on one pooled connection. A refusal commits,
 * as a return from inside app.py's `with conn.transaction()` does; an error rolls back. */
async function transaction(fn) {
  const client = await pool.connect();
  let clean = false; // false: the connection's state is unknown, so the pool drops it
  try {
    await client.query('BEGIN');
    let result;
    try {
      result = await fn(client);
    } catch (e) {
      await client.query('ROLLBACK');
      clean = true;
      throw e;
    }
    await client.query('COMMIT');
    clean = true;
    return result;
  } finally {
    client.release(!clean);
  }
}

/** Python's int() of a query argument, for the errors it raises. */
function pyInt(text) {
  if (!/^\s*[+-]?\d+(_\d+)*\s*$/.test(text)) {
    throw new ValueError(`invalid literal for int() with base 10: '${text}'`);
  }
  return Number(text.replace(/_/g, ''));
}

/** One argument of the query string (a repeated one: the first, as Flask's args[] gives). */
function queryArg(req, name) {
  const v = req.query[name];
  return Array.isArray(v) ? v[0] : v;
}

/** Sends a handler's answer as app.py's jsonify does: keys sorted. */
function answer(res, status, body) {
  const sorted = {};
  for (const k of Object.keys(body).sort()) sorted[k] = body[k];
  res.status(status).json(sorted);
}

function route(handler) {
  return async (req, res, next) => {
    try {
      const result = await handler(req, res, next);
      if (result === undefined) return; // handled (404 or 400) already
      if (result instanceof Refused) {
        answer(res, 409, { ok: false, reason: result.reason });
      } else {
        answer(res, 200, { ok: true, ...result });
      }
    } catch (e) {
      const name = (e && (e.name === 'error' ? e.constructor.name : e.name)) || 'Error';
      answer(res, 500, { ok: false, error: `${name}: ${e && e.message}` });
    }
  };
}

/** Flask's <int:...> converter: digits only, else the route does not match (404). */
function intParam(req, next, name) {
  const v = req.params[name];
  if (!/^\d+$/.test(v)) {
    next();
    return null;
  }
  return Number(v);
}

function buy(forUpdate) {
  return route(async (req, res, next) => {
    const itemId = intParam(req, next, 'item_id');
    if (itemId === null) return undefined;
    const qtyArg = queryArg(req, 'qty');
    const qty = qtyArg === undefined ? 1 : pyInt(qtyArg);
    const lock = forUpdate ? ' FOR UPDATE' : '';
    return transaction(async (client) => {
      const read = await client.query(`SELECT stock, version FROM items WHERE id = $1${lock}`,
        [itemId]);
      if (read.rows.length === 0) return new Refused('no such item');
      const { stock, version } = read.rows[0];
      if (stock < qty) return new Refused('out of stock');
      await think();
      // A full-row save of what the app computed from the read, as an ORM sends it.
      await client.query('UPDATE items SET stock = $1, version = $2 WHERE id = $3',
        [stock - qty, version + 1, itemId]);
      const inserted = await client.query(
        'INSERT INTO orders (item_id, qty, read_version, txid) ' +
          'VALUES ($1, $2, $3, txid_current()) RETURNING txid',
        [itemId, qty, version]);
      return { txid: inserted.rows[0].txid, read_version: version, stock: stock - qty };
    });
  });
}

function redeem(compareAndSwap) {
  return route(async (req) => {
    const { code } = req.params;
    return transaction(async (client) => {
      const read = await client.query('SELECT used, version FROM vouchers WHERE code = $1',
        [code]);
      if (read.rows.length === 0) return new Refused('no such voucher');
      const { used, version } = read.rows[0];
      if (used) return new Refused('already used');
      await think();
      if (compareAndSwap) {
        // Only if nobody changed the voucher since we read it; otherwise we lost the race.
        const updated = await client.query(
          'UPDATE vouchers SET used = $1, version = $2 WHERE code = $3 AND version = $4',
          [true, version + 1, code, version]);
        if (updated.rowCount === 0) return new Refused('redeemed concurrently');
      } else {
        await client.query('UPDATE vouchers SET used = $1, version = $2 WHERE code = $3',
          [true, version + 1, code]);
      }
      const inserted = await client.query(
        'INSERT INTO redemptions (code, txid) VALUES ($1, txid_current()) RETURNING txid',
        [code]);
      return { txid: inserted.rows[0].txid, read_version: version };
    });
  });
}

function signup(table, onConflict) {
  return route(async (req, res) => {
    const email = queryArg(req, 'email');
    if (email === undefined) {
      // Flask's answer to a missing request.args["email"].
      res.status(400).type('text/plain').send("Bad Request: missing query argument 'email'\n");
      return undefined;
    }
    return transaction(async (client) => {
      const found = await client.query(`SELECT 1 FROM ${table} WHERE email = $1`, [email]);
      if (found.rows.length > 0) return new Refused('e-mail taken');
      await think();
      const inserted = await client.query(
        `INSERT INTO ${table} (email) VALUES ($1)${onConflict}`, [email]);
      if (inserted.rowCount === 0) return new Refused('e-mail taken concurrently');
      return { created: true };
    });
  });
}

const app = express();
app.disable('x-powered-by');
app.set('etag', false);
app.set('query parser', 'simple');

const routes = {
  '/buy/:item_id': buy(false),
  // FOR UPDATE: a second buyer waits at its read until the first commits, then sees its write.
  '/buy_safe/:item_id': buy(true),
  '/redeem/:code': redeem(false),
  '/redeem_safe/:code': redeem(true),
  '/signup': signup('users', ''),
  // The unique constraint is the real check; ON CONFLICT turns the loser's insert into a no-op.
  '/signup_safe': signup('users_safe', ' ON CONFLICT (email) DO NOTHING'),
};
for (const [path, handler] of Object.entries(routes)) {
  app.post(path, handler);
  // Flask's answers to another method on a POST route (a POST that did not match is a 404).
  app.all(path, (req, res, next) => {
    if (req.method === 'POST') return next();
    res.set('Allow', 'OPTIONS, POST').status(req.method === 'OPTIONS' ? 200 : 405).end();
  });
}

// Lets a caller wait until every span so far has been exported.
app.post('/flush', async (req, res) => {
  try {
    await provider.forceFlush();
    res.json({ ok: true });
  } catch (e) {
    res.json({ ok: false });
  }
});

const server = app.listen(PORT, args.host, () => {
  // The socket is bound: a caller waiting for this line can connect right away.
  process.stderr.write(`shop: listening on http://${args.host}:${server.address().port}\n`);
});
server.on('error', (e) => {
  process.stderr.write(`shop: ${e.message}\n`);
  process.exit(1);
});

let stopping = false;
function stop() {
  if (stopping) return;
  stopping = true;
  server.close();
  // Exports what is still queued, then exits even if the exporter hangs.
  setTimeout(() => process.exit(0), 10000).unref();
  provider.shutdown().finally(() => process.exit(0));
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
