#!/usr/bin/env node
// Sends one GET per token in TOKEN_FILE (each token once, `Authorization: Bearer <token>`) to URL
// over keep-alive connections, CONCURRENCY requests in flight; for perf/rss.sh.
//
//   node send-tokens.js URL TOKEN_FILE [CONCURRENCY]
//
// Prints {"sent":N,"statuses":{"200":N,...},"errors":E,"seconds":S} on stdout; exits 1 unless
// every request answered 200.
'use strict';
const http = require('http');
const fs = require('fs');

const [url, file, conc = '50'] = process.argv.slice(2);
if (!url || !file) {
  console.error('usage: send-tokens.js URL TOKEN_FILE [CONCURRENCY]');
  process.exit(2);
}
const tokens = fs.readFileSync(file, 'utf8').split('\n').map((l) => l.trim()).filter(Boolean);
const concurrency = Math.max(1, parseInt(conc, 10) || 50);
const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency });
const statuses = {};
let errors = 0;
let next = 0;
let firstError = '';
const t0 = process.hrtime.bigint();

function one(token) {
  return new Promise((resolve) => {
    const req = http.get(url, { agent, headers: { Authorization: `Bearer ${token}` } }, (res) => {
      statuses[res.statusCode] = (statuses[res.statusCode] || 0) + 1;
      res.resume();
      res.on('end', resolve);
      res.on('error', (e) => { errors++; firstError ||= String(e); resolve(); });
    });
    req.setTimeout(10000, () => req.destroy(new Error('timeout')));
    req.on('error', (e) => { errors++; firstError ||= String(e); resolve(); });
  });
}

async function lane() {
  while (next < tokens.length) await one(tokens[next++]);
}

Promise.all(Array.from({ length: concurrency }, lane)).then(() => {
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const out = { sent: tokens.length, statuses, errors, seconds: Math.round(seconds * 100) / 100 };
  if (firstError) out.first_error = firstError;
  console.log(JSON.stringify(out));
  agent.destroy();
  process.exit(statuses[200] === tokens.length && errors === 0 ? 0 : 1);
});
