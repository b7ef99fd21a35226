#!/usr/bin/env node
// A tiny RFC 7662 token introspection endpoint for perf/run.sh's portcullis-introspect target.
//
//   node fake-introspect.js PORT TOKEN_FILE
//
// POST /introspect with a form body `token=...` answers
//   {"active":true,"exp":<now+3600>,"iat":...,"scope":"read","sub":"...","client_id":"perf",...}
// for a token listed in TOKEN_FILE (one per line) and {"active":false} for any other.
// Client authentication is not checked. GET /stats answers {"introspections":N,"active":A}.
'use strict';
const http = require('http');
const fs = require('fs');

const port = parseInt(process.argv[2], 10);
const file = process.argv[3];
if (!(port > 0) || !file) {
  console.error('usage: fake-introspect.js PORT TOKEN_FILE');
  process.exit(2);
}
const subs = new Map();
fs.readFileSync(file, 'utf8').split('\n').map((l) => l.trim()).filter(Boolean)
  .forEach((t, i) => subs.set(t, `user-${String(i).padStart(6, '0')}`));

let introspections = 0;
let active = 0;

function answer(res, status, obj) {
  const body = JSON.stringify(obj);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body), 'Cache-Control': 'no-store' });
  res.end(body);
}

const server = http.createServer((req, res) => {
  const path = req.url.split('?')[0];
  if (req.method === 'GET' && path === '/stats') return answer(res, 200, { introspections, active });
  if (path !== '/introspect') return answer(res, 404, { error: 'not found' });
  if (req.method !== 'POST') return answer(res, 405, { error: 'method not allowed' });
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    introspections++;
    const token = new URLSearchParams(Buffer.concat(chunks).toString('utf8')).get('token') || '';
    const sub = subs.get(token);
    if (sub === undefined) return answer(res, 200, { active: false });
    active++;
    const now = Math.floor(Date.now() / 1000);
    answer(res, 200, {
      active: true, exp: now + 3600, iat: now - 60, scope: 'read', sub,
      client_id: 'perf', token_type: 'Bearer', iss: 'https://idp.perf',
    });
  });
});
server.keepAliveTimeout = 75000;
server.listen(port, '127.0.0.1', () => console.error(`fake introspection endpoint on 127.0.0.1:${port}, ${subs.size} active tokens`));
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => { console.error(`stats: ${introspections} introspections, ${active} active`); process.exit(0); });
