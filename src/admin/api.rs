//! The Admin API's requests and answers, in APISIX 3's shapes. Transport-free: a request in,
//! an answer out, so the whole surface is testable without sockets.

use serde_json::{json, Value};

use crate::config::json::parse_strict;
use crate::config::store::Kind;
use crate::control::{Answer, ChangeError, Control};

use super::key::key_matches;

/// Where the API lives.
pub const PREFIX: &str = "/apisix/admin";

/// An answer: status and JSON body.
#[derive(Debug, PartialEq)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: Value,
}

impl Response {
    fn new(status: u16, body: Value) -> Response {
        Response { status, body }
    }

    fn error(status: u16, msg: impl Into<String>) -> Response {
        Response::new(status, json!({ "error_msg": msg.into() }))
    }
}

/// One request, as read off the connection.
pub struct Request<'a> {
    /// Method, as sent.
    pub method: &'a str,
    /// Target, query included.
    pub target: &'a str,
    /// The `X-API-KEY` header, if sent.
    pub api_key: Option<&'a [u8]>,
    /// The body.
    pub body: &'a [u8],
}

/// The stored key of an object: `/apisix/routes/1`.
fn key_of(kind: Kind, id: &str) -> String {
    format!("/apisix/{}/{id}", kind.name())
}

fn item(kind: Kind, a: &Answer) -> Value {
    json!({ "key": key_of(kind, &a.id), "value": a.value })
}

/// The single place a refused change becomes an answer.
fn refused(e: ChangeError) -> Response {
    match e {
        ChangeError::NotFound(..) => Response::new(404, json!({ "message": "Key not found" })),
        ChangeError::Storage(_) => {
            tracing::error!("admin: {e}");
            Response::error(500, e.to_string())
        }
        ChangeError::Invalid(_) | ChangeError::InUse(_) | ChangeError::FromFile(..) => {
            Response::error(400, e.to_string())
        }
    }
}

/// A request body: strict JSON (no duplicate keys), an object.
fn object_body(body: &[u8]) -> Result<Value, Response> {
    if body.is_empty() {
        return Err(Response::error(400, "invalid request body: empty"));
    }
    let v = parse_strict(body)
        .map_err(|e| Response::error(400, format!("invalid request body: {e}")))?;
    if !v.is_object() {
        return Err(Response::error(
            400,
            "invalid request body: must be a JSON object",
        ));
    }
    Ok(v)
}

/// Answer one Admin API request. The key is checked before anything else is looked at.
pub fn handle(control: &Control, key: &str, req: &Request<'_>) -> Response {
    if !req.api_key.is_some_and(|k| key_matches(k, key)) {
        return Response::error(401, "failed to check token");
    }
    let path = req.target.split(['?', '#']).next().unwrap_or_default();
    let Some(rest) = path.strip_prefix(PREFIX) else {
        return Response::error(404, "404 Route Not Found");
    };
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let kind = match segments.first().copied() {
        Some("routes") => Kind::Routes,
        Some("upstreams") => Kind::Upstreams,
        _ => return Response::error(404, "404 Route Not Found"),
    };
    let id = match segments.len() {
        1 => None,
        2 => Some(segments[1]),
        _ => return Response::error(404, "404 Route Not Found"),
    };
    match (req.method, id) {
        ("GET", None) => {
            let list: Vec<Value> = control.list(kind).iter().map(|a| item(kind, a)).collect();
            Response::new(200, json!({ "total": list.len(), "list": list }))
        }
        ("GET", Some(id)) => match control.get(kind, id) {
            Ok(a) => Response::new(200, item(kind, &a)),
            Err(e) => refused(e),
        },
        ("PUT", id) => {
            let body = match object_body(req.body) {
                Ok(b) => b,
                Err(r) => return r,
            };
            let id = match (id, body.get("id")) {
                (Some(id), _) => id.to_string(),
                (None, Some(Value::String(s))) => s.clone(),
                (None, Some(Value::Number(n))) => n.to_string(),
                (None, _) => {
                    return Response::error(400, "id: is required (in the path or the body)")
                }
            };
            match control.put(kind, &id, body) {
                Ok((a, created)) => Response::new(if created { 201 } else { 200 }, item(kind, &a)),
                Err(e) => refused(e),
            }
        }
        ("POST", None) => {
            let body = match object_body(req.body) {
                Ok(b) => b,
                Err(r) => return r,
            };
            if body.get("id").is_some() {
                return Response::error(400, "id: POST generates the id; use PUT to choose one");
            }
            let id = control.new_id(kind);
            match control.put(kind, &id, body) {
                Ok((a, _)) => Response::new(201, item(kind, &a)),
                Err(e) => refused(e),
            }
        }
        ("PATCH", Some(id)) => {
            let body = match object_body(req.body) {
                Ok(b) => b,
                Err(r) => return r,
            };
            match control.patch(kind, id, body) {
                Ok(a) => Response::new(200, item(kind, &a)),
                Err(e) => refused(e),
            }
        }
        ("DELETE", Some(id)) => match control.delete(kind, id) {
            Ok(()) => Response::new(200, json!({ "deleted": "1", "key": key_of(kind, id) })),
            Err(e) => refused(e),
        },
        (m, _) => Response::error(405, format!("method {m} is not allowed here")),
    }
}
