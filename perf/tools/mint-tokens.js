#!/usr/bin/env node
// Mints a pool of distinct, valid signed JWT access tokens for perf/run.sh and perf/rss.sh,
// one per line, plus one tampered token (a signature byte changed) for the 401 check.
//
//   node mint-tokens.js --alg RS256 --key tests/fixtures/rsa1.pk8.der --count 1000 --out DIR/tokens.txt
//   node mint-tokens.js --alg ES256 --gen-key DIR/ec.pub.pem --count 100000 --out DIR/tokens.txt
//   node mint-tokens.js --opaque --count 1000 --out DIR/opaque.txt     # random opaque tokens
//
// Claims: iss (--iss, default https://idp.perf), sub, aud, exp (a day ahead), iat (a minute
// ago), jti, scope and profile claims: about 380 bytes of JSON, like a real IdP's access token
// (a token of about 900 characters with RS256).
// Writes OUT and OUT.tampered (a token with a valid shape but a wrong signature).
'use strict';
const crypto = require('crypto');
const fs = require('fs');

const args = { alg: 'RS256', count: 1000, iss: 'https://idp.perf', ttl: 86400 };
for (let i = 2; i < process.argv.length; i++) {
  const a = process.argv[i];
  const next = () => {
    if (i + 1 >= process.argv.length) throw new Error(`${a} needs a value`);
    return process.argv[++i];
  };
  switch (a) {
    case '--alg': args.alg = next(); break;
    case '--key': args.key = next(); break;
    case '--gen-key': args.genKey = next(); break;
    case '--count': args.count = parseInt(next(), 10); break;
    case '--iss': args.iss = next(); break;
    case '--ttl': args.ttl = parseInt(next(), 10); break;
    case '--out': args.out = next(); break;
    case '--opaque': args.opaque = true; break;
    default: throw new Error(`unknown argument ${a}`);
  }
}
if (!args.out || !(args.count > 0)) throw new Error('need --out and --count > 0');

const b64u = (buf) => Buffer.from(buf).toString('base64url');
const lines = [];
let tampered;

if (args.opaque) {
  // Opaque tokens as an IdP would hand them out for introspection: 32 random bytes, base64url.
  for (let i = 0; i < args.count; i++) lines.push(b64u(crypto.randomBytes(32)));
  tampered = b64u(crypto.randomBytes(32));
} else {
  let key;
  let signOpts;
  if (args.alg === 'RS256') {
    if (!args.key) throw new Error('RS256 needs --key (PKCS#8 DER)');
    key = crypto.createPrivateKey({ key: fs.readFileSync(args.key), format: 'der', type: 'pkcs8' });
    signOpts = (k) => k;
  } else if (args.alg === 'ES256') {
    if (args.key) {
      key = crypto.createPrivateKey({ key: fs.readFileSync(args.key), format: 'der', type: 'pkcs8' });
    } else if (args.genKey) {
      const pair = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
      key = pair.privateKey;
      fs.writeFileSync(args.genKey, pair.publicKey.export({ type: 'spki', format: 'pem' }));
    } else {
      throw new Error('ES256 needs --key or --gen-key PUB_PEM_OUT');
    }
    // JWS wants r||s, not DER.
    signOpts = (k) => ({ key: k, dsaEncoding: 'ieee-p1363' });
  } else {
    throw new Error(`unsupported --alg ${args.alg} (RS256, ES256)`);
  }
  const header = b64u(JSON.stringify({ alg: args.alg, typ: 'at+jwt', kid: 'perf-1' }));
  const now = Math.floor(Date.now() / 1000);
  const sid = crypto.randomUUID();
  for (let i = 0; i < args.count; i++) {
    const n = String(i).padStart(6, '0');
    const claims = {
      iss: args.iss,
      sub: `f3c1a6e2-${n}-4d2b-9c51-${crypto.randomBytes(6).toString('hex')}`,
      aud: ['perf', 'orders-api'],
      exp: now + args.ttl,
      iat: now - 60,
      jti: crypto.randomUUID(),
      client_id: 'perf',
      sid,
      scope: 'openid profile email orders:read orders:write',
      preferred_username: `perf.user.${n}`,
      email: `perf.user.${n}@example.test`,
    };
    const input = `${header}.${b64u(JSON.stringify(claims))}`;
    const sig = crypto.sign('sha256', Buffer.from(input), signOpts(key));
    lines.push(`${input}.${b64u(sig)}`);
  }
  // Change one character in the middle of the signature (a full 6-bit group, never the padding
  // bits of the last one): same shape, wrong signature.
  const t = lines[0];
  const pos = t.lastIndexOf('.') + 20;
  tampered = t.slice(0, pos) + (t[pos] === 'A' ? 'B' : 'A') + t.slice(pos + 1);
}

fs.writeFileSync(args.out, lines.join('\n') + '\n');
fs.writeFileSync(args.out + '.tampered', tampered + '\n');
