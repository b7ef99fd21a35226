//! Browser-session costs per request: sealing a realistic session into its cookie value,
//! opening one (base64 decode, AES-256-GCM, decode), reading the chunked cookie back out of a
//! Cookie header, and the per-core cache hit that replaces the open for a cookie seen before
//! (the one-pass read, a hash of a sample of the value and one comparison of the whole value).

use std::hint::black_box;
use std::rc::Rc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use criterion::{criterion_group, criterion_main, Criterion};
use portcullis::plugins::openid_connect::session::{
    read_session, set_cookie_values, CookieAttrs, Session, SessionCache, SessionKey,
};

const COOKIE: &str = "session";

/// A JWT-shaped string of about `len` bytes: header, payload and an RS256-sized signature.
fn jwt_like(len: usize, seed: u8) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT","kid":"k1"}"#);
    let sig = URL_SAFE_NO_PAD.encode([seed; 256]);
    let payload_len = len.saturating_sub(header.len() + sig.len() + 2) * 3 / 4;
    let payload: Vec<u8> = (0..payload_len).map(|i| (i as u8) ^ seed).collect();
    format!("{header}.{}.{sig}", URL_SAFE_NO_PAD.encode(payload))
}

/// A session as the login flow stores it after a typical login.
fn realistic() -> Session {
    let id_claims = serde_json::json!({
        "iss": "https://idp.example.com/realms/main", "sub": "8f14e45f-ceea-467f-a0e6-3c8f2a1b9d7e",
        "aud": "portcullis", "exp": 1_700_003_600, "iat": 1_700_000_000, "auth_time": 1_700_000_000,
        "nonce": "Qm9vbWVyYW5nLW5vbmNlLXZhbHVlLTEyMzQ1", "azp": "portcullis", "sid": "a1b2c3d4-e5f6",
        "email": "someone@example.com", "email_verified": true, "name": "Some One",
        "preferred_username": "someone", "given_name": "Some", "family_name": "One"
    })
    .to_string();
    let userinfo = serde_json::json!({
        "sub": "8f14e45f-ceea-467f-a0e6-3c8f2a1b9d7e", "email": "someone@example.com",
        "email_verified": true, "name": "Some One", "preferred_username": "someone",
        "groups": ["engineering", "on-call", "admins"], "locale": "en-GB",
        "zoneinfo": "Europe/London", "picture": "https://idp.example.com/avatars/8f14e45f.png"
    })
    .to_string();
    Session {
        access_token: jwt_like(1_000, 1),
        access_expires_at: Some(1_700_003_600.0),
        refresh_token: Some(jwt_like(600, 2)),
        // An id token carries its claims as its payload.
        id_token: format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT","kid":"k1"}"#),
            URL_SAFE_NO_PAD.encode(&id_claims),
            URL_SAFE_NO_PAD.encode([3u8; 256])
        ),
        id_claims,
        userinfo: Some(userinfo),
        created_at: 1_700_000_000.0,
        last_seen: 1_700_000_100.0,
        renewed_at: 1_700_000_000.0,
        headers: Default::default(),
    }
}

fn session(c: &mut Criterion) {
    let key = SessionKey::from_secret(&[42u8; 32]);
    let s = realistic();
    let sealed = s.seal(&key, COOKIE);
    let attrs = CookieAttrs {
        path: "/",
        same_site: "Lax",
        secure: true,
        max_age: None,
    };
    let set = set_cookie_values(COOKIE, &sealed, &attrs, 0);
    println!(
        "session: claims {} B, userinfo {} B, sealed cookie {} B in {} chunk(s)",
        s.id_claims.len(),
        s.userinfo.as_deref().map_or(0, str::len),
        sealed.len(),
        set.len()
    );
    // The request's Cookie header as the browser sends the chunks back, among other cookies.
    let header = format!(
        "_ga=GA1.2.123.456; {}; theme=dark",
        set.iter()
            .filter_map(|v| v.split(';').next())
            .collect::<Vec<_>>()
            .join("; ")
    );

    let mut g = c.benchmark_group("session");
    g.bench_function("seal", |b| b.iter(|| black_box(&s).seal(&key, COOKIE)));
    g.bench_function("open", |b| {
        b.iter(|| Session::open(&key, COOKIE, black_box(&sealed)).expect("opens"))
    });
    let ours = |n: &[u8]| n.starts_with(COOKIE.as_bytes());
    g.bench_function("read_session", |b| {
        b.iter(|| read_session(std::iter::once(black_box(header.as_bytes())), COOKIE, ours))
    });
    let mut cache = SessionCache::new(10_000);
    cache.insert(COOKIE, sealed.as_bytes(), Rc::new(s.clone()));
    // What a request with a known cookie pays: reassemble the value, then hit the cache.
    g.bench_function("cache_hit", |b| {
        b.iter(|| {
            let found = read_session(std::iter::once(black_box(header.as_bytes())), COOKIE, ours);
            cache
                .get(COOKIE, &found.value.expect("read"))
                .expect("cached")
        })
    });
    g.finish();
}

criterion_group!(benches, session);
criterion_main!(benches);
