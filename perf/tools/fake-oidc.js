#!/usr/bin/env node
// A small OpenID provider for perf/run.sh's portcullis-session target: just enough of the
// authorization code flow for one login by curl, then counters that show the benchmark made no
// further IdP calls.
//
//   node fake-oidc.js PORT KEY_PK8_DER [--client-id perf] [--client-secret perf-secret]
//
// The issuer is http://127.0.0.1:PORT. Endpoints:
//   GET  /.well-known/openid-configuration   issuer and the endpoints below
//   GET  /jwks                               the public half of KEY (RSA), kid "perf-1"
//   GET  /authorize                          302 to redirect_uri?code=…&state=…&iss=…; remembers
//                                            the nonce, redirect_uri and PKCE challenge per code
//   POST /token                              authorization_code (once per code; client_secret_basic
//                                            or client_secret_post) → {access_token, token_type,
//                                            expires_in: 86400, id_token}; both tokens RS256 JWTs
//   GET  /userinfo                           {sub, name, email} for a bearer access token it issued
//   GET  /end_session                        302 to post_logout_redirect_uri, or 200
//   GET  /stats                              {"requests": {path: count}, "refused": N}; not counted
// Every other path is 404. Requests are counted per path, refused ones (4xx) also in "refused".
'use strict';
const http = require('http');
const crypto = require('crypto');
const fs = require('fs');

const port = parseInt(process.argv[2], 10);
const keyFile = process.argv[3];
const opts = { clientId: 'perf', clientSecret: 'perf-secret' };
for (let i = 4; i < process.argv.length; i++) {
  const a = process.argv[i];
  const next = () => {
    if (i + 1 >= process.argv.length) throw new Error(`${a} needs a value`);
    return process.argv[++i];
  };
  switch (a) {
    case '--client-id': opts.clientId = next(); break;
    case '--client-secret': opts.clientSecret = next(); break;
    default: throw new Error(`unknown argument ${a}`);
  }
}
if (!(port > 0) || !keyFile) {
  console.error('usage: fake-oidc.js PORT KEY_PK8_DER [--client-id ID] [--client-secret SECRET]');
  process.exit(2);
}

const KID = 'perf-1';
const TTL = 86400;
const issuer = `http://127.0.0.1:${port}`;
const privateKey = crypto.createPrivateKey({ key: fs.readFileSync(keyFile), format: 'der', type: 'pkcs8' });
const jwk = crypto.createPublicKey(privateKey).export({ format: 'jwk' });
const jwks = { keys: [{ kty: jwk.kty, kid: KID, use: 'sig', alg: 'RS256', n: jwk.n, e: jwk.e }] };
const discovery = {
  issuer,
  authorization_endpoint: `${issuer}/authorize`,
  token_endpoint: `${issuer}/token`,
  userinfo_endpoint: `${issuer}/userinfo`,
  jwks_uri: `${issuer}/jwks`,
  end_session_endpoint: `${issuer}/end_session`,
  response_types_supported: ['code'],
  subject_types_supported: ['public'],
  id_token_signing_alg_values_expected: ['RS256'],
  token_endpoint_auth_methods_supported: ['client_secret_basic', 'client_secret_post'],
  code_challenge_methods_supported: ['S256'],
  scopes_supported: ['openid', 'profile', 'email'],
};

const b64u = (buf) => Buffer.from(buf).toString('base64url');
function sign(typ, claims) {
  const input = `${b64u(JSON.stringify({ alg: 'RS256', typ, kid: KID }))}.${b64u(JSON.stringify(claims))}`;
  return `${input}.${b64u(crypto.sign('sha256', Buffer.from(input), privateKey))}`;
}

const counts = {};
let refused = 0;
const codes = new Map();   // code -> { nonce, redirectUri, challenge, sub, scope, expires }
const users = new Map();   // access token -> userinfo
let logins = 0;

function answer(res, status, obj, headers = {}) {
  const body = JSON.stringify(obj);
  if (status >= 400) refused++;
  res.writeHead(status, {
    'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body), 'Cache-Control': 'no-store', ...headers,
  });
  res.end(body);
}
function redirect(res, location) {
  res.writeHead(302, { Location: location, 'Content-Length': 0, 'Cache-Control': 'no-store' });
  res.end();
}
const oauthError = (res, status, error, description, headers) =>
  answer(res, status, { error, error_description: description }, headers);

// client_secret_basic: Basic base64(urlencode(id):urlencode(secret)) (RFC 6749 2.3.1);
// client_secret_post: client_id and client_secret in the form.
function clientOk(req, form) {
  const auth = req.headers.authorization || '';
  if (/^basic /i.test(auth)) {
    const plain = Buffer.from(auth.slice(6).trim(), 'base64').toString('utf8');
    const colon = plain.indexOf(':');
    if (colon < 0) return false;
    const dec = (s) => decodeURIComponent(s.replace(/\+/g, ' '));
    try {
      return dec(plain.slice(0, colon)) === opts.clientId && dec(plain.slice(colon + 1)) === opts.clientSecret;
    } catch (_) {
      return false;
    }
  }
  return form.get('client_id') === opts.clientId && form.get('client_secret') === opts.clientSecret;
}

function authorize(res, q) {
  const redirectUri = q.get('redirect_uri');
  if (q.get('client_id') !== opts.clientId || !redirectUri || !/^https?:\/\//.test(redirectUri)) {
    return oauthError(res, 400, 'invalid_request', 'unknown client_id or no absolute redirect_uri');
  }
  const back = new URL(redirectUri);
  const state = q.get('state');
  if (state !== null) back.searchParams.set('state', state);
  if (q.get('response_type') !== 'code') {
    back.searchParams.set('error', 'unsupported_response_type');
    refused++;
    return redirect(res, back.toString());
  }
  const scope = q.get('scope') || '';
  if (!scope.split(' ').includes('openid')) {
    back.searchParams.set('error', 'invalid_scope');
    refused++;
    return redirect(res, back.toString());
  }
  if (q.get('code_challenge') && q.get('code_challenge_method') !== 'S256') {
    back.searchParams.set('error', 'invalid_request');
    refused++;
    return redirect(res, back.toString());
  }
  logins++;
  const n = String(logins).padStart(6, '0');
  const code = b64u(crypto.randomBytes(24));
  codes.set(code, {
    nonce: q.get('nonce'), redirectUri, challenge: q.get('code_challenge'), scope,
    sub: `f3c1a6e2-${n}-4d2b-9c51-${crypto.randomBytes(6).toString('hex')}`, n,
    expires: Date.now() + 60000,
  });
  back.searchParams.set('code', code);
  back.searchParams.set('iss', issuer);
  redirect(res, back.toString());
}

function token(req, res, form) {
  if (!clientOk(req, form)) {
    return oauthError(res, 401, 'invalid_client', 'client authentication failed', { 'WWW-Authenticate': 'Basic realm="fake-oidc"' });
  }
  if (form.get('grant_type') !== 'authorization_code') {
    return oauthError(res, 400, 'unsupported_grant_type', 'only authorization_code');
  }
  const code = form.get('code') || '';
  const grant = codes.get(code);
  codes.delete(code);   // one use, even when it fails below
  if (!grant || grant.expires < Date.now()) return oauthError(res, 400, 'invalid_grant', 'unknown, used or expired code');
  if (form.get('redirect_uri') !== grant.redirectUri) return oauthError(res, 400, 'invalid_grant', 'redirect_uri differs from the login request');
  if (grant.challenge) {
    const verifier = form.get('code_verifier') || '';
    if (b64u(crypto.createHash('sha256').update(verifier).digest()) !== grant.challenge) {
      return oauthError(res, 400, 'invalid_grant', 'PKCE verifier does not match');
    }
  }
  const now = Math.floor(Date.now() / 1000);
  const name = `Perf User ${grant.n}`;
  const email = `perf.user.${grant.n}@example.test`;
  const sid = crypto.randomUUID();
  // Like a real IdP's: a JWT access token (claims as perf/tools/mint-tokens.js's) and an id token.
  const accessToken = sign('at+jwt', {
    iss: issuer, sub: grant.sub, aud: [opts.clientId, 'orders-api'], exp: now + TTL, iat: now,
    jti: crypto.randomUUID(), client_id: opts.clientId, sid, scope: grant.scope,
    preferred_username: `perf.user.${grant.n}`, email,
  });
  const idClaims = {
    iss: issuer, sub: grant.sub, aud: opts.clientId, exp: now + TTL, iat: now, auth_time: now, sid,
    name, email, email_verified: true, preferred_username: `perf.user.${grant.n}`,
  };
  if (grant.nonce !== null) idClaims.nonce = grant.nonce;
  users.set(accessToken, { sub: grant.sub, name, email });
  answer(res, 200, { access_token: accessToken, token_type: 'Bearer', expires_in: TTL, id_token: sign('JWT', idClaims), scope: grant.scope });
}

function userinfo(req, res) {
  const m = /^bearer\s+(\S+)$/i.exec(req.headers.authorization || '');
  const user = m && users.get(m[1]);
  if (!user) return oauthError(res, 401, 'invalid_token', 'unknown access token', { 'WWW-Authenticate': 'Bearer error="invalid_token"' });
  answer(res, 200, user);
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, issuer);
  const path = url.pathname;
  if (req.method === 'GET' && path === '/stats') return answer(res, 200, { requests: counts, refused });
  counts[path] = (counts[path] || 0) + 1;
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const get = req.method === 'GET' || req.method === 'HEAD';
    switch (path) {
      case '/.well-known/openid-configuration':
        return get ? answer(res, 200, discovery, { 'Cache-Control': 'max-age=86400' }) : answer(res, 405, { error: 'method not allowed' });
      case '/jwks':
        return get ? answer(res, 200, jwks, { 'Cache-Control': 'max-age=86400' }) : answer(res, 405, { error: 'method not allowed' });
      case '/authorize':
        return get ? authorize(res, url.searchParams) : answer(res, 405, { error: 'method not allowed' });
      case '/token':
        if (req.method !== 'POST') return answer(res, 405, { error: 'method not allowed' });
        return token(req, res, new URLSearchParams(Buffer.concat(chunks).toString('utf8')));
      case '/userinfo':
        return userinfo(req, res);
      case '/end_session': {
        const to = url.searchParams.get('post_logout_redirect_uri');
        if (to) return redirect(res, to);
        return answer(res, 200, { logged_out: true });
      }
      default:
        return answer(res, 404, { error: 'not found' });
    }
  });
});
server.keepAliveTimeout = 75000;
server.listen(port, '127.0.0.1', () => console.error(`fake OpenID provider ${issuer}, client ${opts.clientId}`));
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => { console.error(`stats: ${JSON.stringify({ requests: counts, refused })}`); process.exit(0); });
}
