// A real OpenID Connect provider (the OpenID-certified `oidc-provider` package) for Portcullis's
// integration tests. Started by tests/common/real_idp.rs; can also be run by hand:
//
//   node tests/idp/server.mjs [PORT]            (PORT 0 or absent: pick a free one)
//
// Environment:
//   IDP_PORT                        port when no argument is given (default 0 = pick one)
//   IDP_REDIRECT_URIS               comma-separated redirect URIs of client `portcullis`
//   IDP_POST_LOGOUT_REDIRECT_URIS   comma-separated post-logout redirect URIs
//   IDP_EXIT_WITH_STDIN=1           exit when stdin reaches EOF (the test harness keeps a pipe
//                                   open, so a killed test run never leaves the IdP behind)
//   IDP_DEBUG=1                     log every request and grant error to stderr
//   IDP_METADATA_DELAY_MS           answer discovery and JWKS requests only after this many ms
//                                   (a slow IdP: what does the proxy do meanwhile?)
//
// Listens on 127.0.0.1 with the issuer http://localhost:<port> (browsers ignore ports for cookies:
// the proxy under test is 127.0.0.1, so the IdP's cookies never reach it). Prints exactly one line
// `READY <port>` on stdout once it accepts connections; everything else goes to stderr. Exits 0 on
// SIGTERM/SIGINT.
//
// Client `portcullis` / `secret` may use client_credentials, authorization_code and refresh_token.
// A client_credentials (or code/refresh) token request naming `resource=urn:portcullis:api` gets
// an RS256 JWT access token (header typ "at+jwt", aud = the resource, scopes among
// `read write admin`); a request without a resource gets an opaque access token (introspectable).
// Tokens live 10 minutes. The built-in development login form accepts any login and password.

import { readFileSync } from 'node:fs';
import http from 'node:http';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import Provider, { errors } from 'oidc-provider';

const here = dirname(fileURLToPath(import.meta.url));

// The fixed RS256 test signing key (a test key, committed on purpose); its public half is
// tests/idp/public.pem.
const jwks = JSON.parse(readFileSync(join(here, 'signing-key.json'), 'utf8'));

const CLIENT_ID = 'portcullis';
const CLIENT_SECRET = 'secret';
const API_RESOURCE = 'urn:portcullis:api';
const API_SCOPES = 'read write admin';
const TOKEN_TTL = 10 * 60;

function list(name, fallback) {
  const raw = process.env[name];
  if (raw === undefined || raw.trim() === '') return fallback;
  return raw.split(',').map((s) => s.trim()).filter(Boolean);
}

function log(...args) {
  console.error('[idp]', ...args);
}

const requestedPort = Number(process.argv[2] ?? process.env.IDP_PORT ?? 0);
if (!Number.isInteger(requestedPort) || requestedPort < 0 || requestedPort > 65535) {
  log(`bad port ${process.argv[2] ?? process.env.IDP_PORT}`);
  process.exit(2);
}

// Bind first so the issuer can name the port that was actually picked.
const server = http.createServer();
server.keepAliveTimeout = 5000;
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(requestedPort, '127.0.0.1', resolve);
});
const { port } = server.address();
const issuer = `http://localhost:${port}`;

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: CLIENT_ID,
      client_secret: CLIENT_SECRET,
      grant_types: ['client_credentials', 'authorization_code', 'refresh_token'],
      response_types: ['code'],
      redirect_uris: list('IDP_REDIRECT_URIS', ['http://127.0.0.1/.apisix/redirect']),
      post_logout_redirect_uris: list('IDP_POST_LOGOUT_REDIRECT_URIS', []),
      // client_secret_post works as well for a registered client (oidc-provider accepts both).
      token_endpoint_auth_method: 'client_secret_basic',
    },
  ],
  jwks,
  cookies: { keys: ['portcullis-test-idp-cookie-key-not-a-secret'] },
  scopes: ['openid', 'offline_access', 'profile', 'email', ...API_SCOPES.split(' ')],
  claims: {
    openid: ['sub'],
    profile: ['name', 'preferred_username'],
    email: ['email', 'email_verified'],
  },
  // Any login is accepted by the development login form; the account is whatever was typed.
  async findAccount(ctx, sub) {
    return {
      accountId: sub,
      async claims() {
        return {
          sub,
          name: `Test User ${sub}`,
          preferred_username: sub,
          email: `${sub}@example.test`,
          email_verified: true,
        };
      },
    };
  },
  features: {
    devInteractions: { enabled: true },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // No resource named in the request: no resource server, so an opaque access token.
      defaultResource: (ctx, client, oneOf) => oneOf,
      getResourceServerInfo(ctx, resourceIndicator) {
        if (resourceIndicator === API_RESOURCE) {
          return {
            scope: API_SCOPES,
            audience: API_RESOURCE,
            accessTokenTTL: TOKEN_TTL,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: 'RS256' } },
          };
        }
        throw new errors.InvalidTarget();
      },
      useGrantedResource: () => false,
    },
  },
  // Refresh tokens for every code grant of a client allowed to refresh (not only offline_access).
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  ttl: {
    AccessToken: (ctx, token) => token.resourceServer?.accessTokenTTL ?? TOKEN_TTL,
    ClientCredentials: (ctx, token) => token.resourceServer?.accessTokenTTL ?? TOKEN_TTL,
    IdToken: TOKEN_TTL,
    AuthorizationCode: 60,
    Interaction: 60 * 60,
    Session: 24 * 60 * 60,
    Grant: 24 * 60 * 60,
    RefreshToken: 24 * 60 * 60,
  },
});

provider.on('server_error', (ctx, err) => log('server_error', err));
if (process.env.IDP_DEBUG) {
  provider.use(async (ctx, next) => {
    const started = Date.now();
    await next();
    log(`${ctx.method} ${ctx.originalUrl} -> ${ctx.status} (${Date.now() - started} ms)`);
  });
  provider.on('grant.error', (ctx, err) => log('grant.error', err.message, err.error_description));
}

const metadataDelayMs = Number(process.env.IDP_METADATA_DELAY_MS ?? 0);
if (metadataDelayMs > 0) {
  provider.use(async (ctx, next) => {
    if (ctx.path === '/.well-known/openid-configuration' || ctx.path === '/jwks') {
      await new Promise((resolve) => setTimeout(resolve, metadataDelayMs));
    }
    await next();
  });
}

server.on('request', provider.callback());

let stopping = false;
function stop(why) {
  if (stopping) return;
  stopping = true;
  log(`stopping (${why})`);
  server.close(() => process.exit(0));
  server.closeAllConnections();
  // Never hang on exit.
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', () => stop('SIGTERM'));
process.on('SIGINT', () => stop('SIGINT'));
if (process.env.IDP_EXIT_WITH_STDIN === '1') {
  process.stdin.on('end', () => stop('stdin closed'));
  process.stdin.on('error', () => stop('stdin error'));
  process.stdin.resume();
}

log(`issuer ${issuer}`);
process.stdout.write(`READY ${port}\n`);
