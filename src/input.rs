//! The policy's input document, built directly as a regorus [`Value`]
//! (no JSON text in between).
//!
//! The document is a strict superset of what OPA's Envoy plugin hands its
//! policies: `attributes` in the protobuf JSON mapping (lowerCamelCase keys,
//! 64-bit integers as strings, timestamps in RFC 3339, bytes in base64, empty
//! fields left out), `parsed_path`, `parsed_query`, `parsed_body`,
//! `truncated_body` and `version`. With `[policy] body_errors =
//! "pass_to_policy"` Arbiter adds `body_error` when a body of a supported
//! type does not parse (by default such a request never reaches the policy).

use std::collections::BTreeMap;

use base64::Engine as _;
use regorus::Value;

use crate::context::{ParsedBody, RequestContext, query_to_value};
use crate::identity::{Authentication, DevicePosture, Identity};
use crate::proto::auth::AttributeContext;
use crate::proto::auth::attribute_context::{HttpRequest, Peer, Request, TlsSession};
use crate::proto::core::{Address, HeaderMap, Metadata, address, socket_address};

/// The parts of the input document a policy set can read: a tree of keys,
/// each either read whole or only in some of its own keys. Built from the
/// policies (`policy` finds them); the document is built only that far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InputPaths {
    whole: bool,
    children: BTreeMap<String, InputPaths>,
}

static ALL: InputPaths = InputPaths {
    whole: true,
    children: BTreeMap::new(),
};

impl InputPaths {
    /// The whole document.
    pub fn all() -> Self {
        ALL.clone()
    }

    pub fn is_all(&self) -> bool {
        self.whole
    }

    /// Marks `path` (keys from the root) as read whole.
    pub fn add(&mut self, path: &[String]) {
        if self.whole {
            return;
        }
        match path.split_first() {
            None => {
                self.whole = true;
                self.children.clear();
            }
            Some((key, rest)) => self.children.entry(key.clone()).or_default().add(rest),
        }
    }

    /// What is read under `key`, if anything.
    pub fn get(&self, key: &str) -> Option<&InputPaths> {
        if self.whole {
            Some(&ALL)
        } else {
            self.children.get(key)
        }
    }

    /// A document cut down to these paths, as far as it is made of
    /// objects: what a policy that reads only these paths can see of it.
    /// For comparing decisions on whole and partial documents.
    pub fn project(&self, value: &Value) -> Value {
        if self.whole {
            return value.clone();
        }
        let Ok(fields) = value.as_object() else {
            return value.clone();
        };
        let kept: BTreeMap<Value, Value> = fields
            .iter()
            .filter_map(|(key, value)| {
                let child = self.children.get(key.as_string().ok()?.as_ref())?;
                Some((key.clone(), child.project(value)))
            })
            .collect();
        Value::from(kept)
    }

    /// Every path read whole, dotted, sorted (for logs and tests).
    pub fn paths(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.collect("", &mut out);
        out
    }

    fn collect(&self, prefix: &str, out: &mut Vec<String>) {
        if self.whole {
            out.push(prefix.to_owned());
            return;
        }
        for (key, child) in &self.children {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            child.collect(&path, out);
        }
    }
}

/// Builds the input document for one request: the request, and the
/// caller's verified identity (`identity`, `null` when there is none; a
/// rejected token that its provider hands to the policy also sets
/// `identity_error`).
///
/// `device` is the verified device posture, with the device's entry from the
/// inventory (`inventory`, keyed by device ID) when one is configured.
pub fn build(ctx: &RequestContext, identity: &Identity, inventory: Option<&Value>) -> Value {
    build_reading(ctx, identity, inventory, &ALL)
}

/// As [`build`], but only the parts in `reads`: what a policy cannot read
/// is never built. For any path in `reads`, the document holds exactly
/// what [`build`] would.
pub fn build_reading(
    ctx: &RequestContext,
    identity: &Identity,
    inventory: Option<&Value>,
    reads: &InputPaths,
) -> Value {
    let wants = |key: &str| reads.get(key).is_some();
    let mut doc = Obj::new();
    if wants("device") {
        doc.insert("device", device(&identity.device, inventory));
    }
    match &identity.user {
        Authentication::Verified(token) if wants("identity") => {
            doc.insert("identity", token.document().clone());
        }
        Authentication::Verified(_) => {}
        Authentication::Anonymous => doc.insert("identity", Value::Null),
        Authentication::Rejected { error, .. } => {
            doc.insert("identity", Value::Null);
            doc.insert("identity_error", Value::from(error.label()));
        }
    }
    if let Some(part) = reads.get("attributes") {
        doc.insert("attributes", attributes_reading(&ctx.attributes, part));
    }
    if let Some(part) = reads.get("source") {
        doc.insert("source", source(ctx, part));
    }
    if wants("destination") {
        doc.insert("destination", destination(ctx));
    }
    if wants("parsed_path") {
        let segments: Vec<Value> = ctx
            .path
            .segments
            .iter()
            .map(|s| Value::from(s.as_str()))
            .collect();
        doc.insert("parsed_path", Value::from(segments));
    }
    if wants("parsed_query") {
        doc.insert("parsed_query", query_to_value(ctx.query()));
    }
    let (parsed, truncated) = match &ctx.body {
        ParsedBody::Parsed(value) => (value.clone(), false),
        ParsedBody::Truncated => (Value::Null, true),
        ParsedBody::None => (Value::Null, false),
        ParsedBody::Invalid(reason) => {
            doc.insert("body_error", Value::from(reason.as_str()));
            (Value::Null, false)
        }
    };
    if wants("parsed_body") {
        doc.insert("parsed_body", parsed);
    }
    doc.insert("truncated_body", Value::from(truncated));
    if wants("version") {
        let mut version = Obj::new();
        version.insert("ext_authz", Value::from("v3"));
        version.insert("encoding", Value::from("protojson"));
        doc.insert("version", version.into_value());
    }
    doc.into_value()
}

/// Claims of a posture token that `input.device` lifts to the top.
const POSTURE_FIELDS: [&str; 7] = [
    "compliant",
    "managed",
    "encrypted",
    "os",
    "os_version",
    "patched",
    "risk",
];

fn device(posture: &DevicePosture, inventory: Option<&Value>) -> Value {
    let mut o = Obj::new();
    match posture {
        DevicePosture::Absent => return Value::Null,
        DevicePosture::Verified {
            token,
            binding,
            age,
        } => {
            let id = posture.device_id();
            o.insert("id", id.map_or(Value::Null, Value::from));
            o.insert("verified", Value::from(binding.is_verified()));
            if let Some(error) = binding.error() {
                o.insert("error", Value::from(error));
            }
            for field in POSTURE_FIELDS {
                let value = match token.claim(field) {
                    Value::Undefined => Value::Null,
                    value => value.clone(),
                };
                o.insert(field, value);
            }
            o.insert("age_seconds", Value::from(age.as_secs()));
            o.insert("claims", token.document()["claims"].clone());
            o.insert("issuer", Value::from(token.issuer.as_str()));
            let entry = match (inventory, id) {
                (Some(inventory), Some(id)) => inventory[id].clone(),
                _ => Value::Undefined,
            };
            o.insert(
                "inventory",
                if entry == Value::Undefined {
                    Value::Null
                } else {
                    entry
                },
            );
        }
        DevicePosture::Rejected(error) => {
            o.insert("id", Value::Null);
            o.insert("verified", Value::from(false));
            o.insert("error", Value::from(error.label()));
        }
        DevicePosture::EdgeHeader(value) => {
            o.insert("id", Value::Null);
            o.insert("verified", Value::from(false));
            let compliant =
                value.eq_ignore_ascii_case("compliant") || value.eq_ignore_ascii_case("true");
            o.insert("compliant", Value::from(compliant));
            o.insert("source", Value::from("edge_header"));
        }
    }
    o.into_value()
}

/// `source`: the peer Envoy saw, the client address believed through
/// trusted proxies, the raw `X-Forwarded-For` chain and the peer's principal.
fn source(ctx: &RequestContext, reads: &InputPaths) -> Value {
    let s = &ctx.source;
    let wants = |key: &str| reads.get(key).is_some();
    let mut o = Obj::new();
    if wants("address") {
        o.insert(
            "address",
            s.peer.map_or(Value::Null, |ip| Value::from(ip.to_string())),
        );
    }
    if wants("port") {
        o.insert("port", s.peer_port.map_or(Value::Null, Value::from));
    }
    if wants("ip") {
        o.insert(
            "ip",
            s.ip.map_or(Value::Null, |ip| Value::from(ip.to_string())),
        );
    }
    if wants("forwarded_for") {
        o.insert(
            "forwarded_for",
            Value::from(
                s.forwarded_for
                    .iter()
                    .map(|e| Value::from(e.as_str()))
                    .collect::<Vec<_>>(),
            ),
        );
    }
    if wants("trusted_hops") {
        o.insert("trusted_hops", Value::from(s.trusted_hops));
    }
    if wants("principal") {
        o.insert("principal", principal(ctx.source_principal()));
    }
    o.into_value()
}

/// `destination`: the address Envoy accepted the request on and its own principal.
fn destination(ctx: &RequestContext) -> Value {
    let mut o = Obj::new();
    let socket = ctx
        .attributes
        .destination
        .as_ref()
        .and_then(|p| p.address.as_ref())
        .and_then(|a| match &a.address {
            Some(address::Address::SocketAddress(s)) => Some(s),
            _ => None,
        });
    o.insert(
        "address",
        socket.map_or(Value::Null, |s| Value::from(s.address.as_str())),
    );
    let port = socket.and_then(|s| match s.port_specifier {
        Some(socket_address::PortSpecifier::PortValue(p)) => Some(p),
        _ => None,
    });
    o.insert("port", port.map_or(Value::Null, Value::from));
    o.insert("principal", principal(ctx.destination_principal()));
    o.into_value()
}

/// `{id, spiffe, trusted, trust_domain, path, namespace, service_account}`;
/// the SPIFFE fields only for a SPIFFE ID, namespace and service account
/// only for `/ns/<ns>/sa/<sa>` paths.
fn principal(p: Option<&crate::context::Principal>) -> Value {
    let Some(p) = p else { return Value::Null };
    let mut o = Obj::new();
    o.insert("id", Value::from(p.id.as_str()));
    o.insert("spiffe", Value::from(p.spiffe.is_some()));
    o.insert("trusted", Value::from(p.trusted));
    if let Some(id) = &p.spiffe {
        o.insert("trust_domain", Value::from(id.trust_domain()));
        o.insert("path", Value::from(id.path()));
        if let Some((ns, sa)) = id.namespace_and_service_account() {
            o.insert("namespace", Value::from(ns));
            o.insert("service_account", Value::from(sa));
        }
    }
    o.into_value()
}

/// `attributes`, only as far as `reads` goes: the request's HTTP part key by
/// key (headers name by name), the other parts whole.
fn attributes_reading(attrs: &AttributeContext, reads: &InputPaths) -> Value {
    if reads.is_all() {
        return attributes(attrs);
    }
    let mut o = Obj::new();
    if let Some(request) = &attrs.request
        && let Some(part) = reads.get("request")
    {
        let mut r = Obj::new();
        if let Some(t) = &request.time
            && part.get("time").is_some()
        {
            r.insert("time", Value::from(rfc3339(t.seconds, t.nanos)));
        }
        if let Some(http) = &request.http
            && let Some(part) = part.get("http")
        {
            r.insert("http", http_reading(http, part));
        }
        o.insert("request", r.into_value());
    }
    let wants = |key: &str| reads.get(key).is_some();
    if wants("source") {
        o.opt("source", attrs.source.as_ref().map(peer));
    }
    if wants("destination") {
        o.opt("destination", attrs.destination.as_ref().map(peer));
    }
    if wants("contextExtensions") {
        o.string_map("contextExtensions", &attrs.context_extensions);
    }
    if wants("metadataContext") {
        o.opt(
            "metadataContext",
            attrs.metadata_context.as_ref().map(metadata),
        );
    }
    if wants("routeMetadataContext") {
        o.opt(
            "routeMetadataContext",
            attrs.route_metadata_context.as_ref().map(metadata),
        );
    }
    if wants("tlsSession") {
        o.opt("tlsSession", attrs.tls_session.as_ref().map(tls_session));
    }
    o.into_value()
}

fn http_reading(h: &HttpRequest, reads: &InputPaths) -> Value {
    if reads.is_all() {
        return http_request(h);
    }
    let mut o = Obj::new();
    if let Some(names) = reads.get("headers")
        && !h.headers.is_empty()
    {
        let object: BTreeMap<Value, Value> = if names.is_all() {
            h.headers
                .iter()
                .map(|(k, v)| (Value::from(k.as_str()), Value::from(v.as_str())))
                .collect()
        } else {
            names
                .children
                .keys()
                .filter_map(|name| {
                    h.headers
                        .get(name)
                        .map(|v| (Value::from(name.as_str()), Value::from(v.as_str())))
                })
                .collect()
        };
        o.insert("headers", Value::from(object));
    }
    let wants = |key: &str| reads.get(key).is_some();
    if wants("id") {
        o.string("id", &h.id);
    }
    if wants("method") {
        o.string("method", &h.method);
    }
    if wants("headerMap") {
        o.opt("headerMap", h.header_map.as_ref().map(header_map));
    }
    for (key, value) in [
        ("path", &h.path),
        ("host", &h.host),
        ("scheme", &h.scheme),
        ("query", &h.query),
        ("fragment", &h.fragment),
        ("protocol", &h.protocol),
        ("body", &h.body),
    ] {
        if wants(key) {
            o.string(key, value);
        }
    }
    if wants("size") && h.size != 0 {
        o.insert("size", Value::from(h.size.to_string()));
    }
    if wants("rawBody") {
        o.bytes("rawBody", &h.raw_body);
    }
    o.into_value()
}

/// `attributes`: the AttributeContext in the protobuf JSON mapping.
pub fn attributes(attrs: &AttributeContext) -> Value {
    let mut o = Obj::new();
    o.opt("source", attrs.source.as_ref().map(peer));
    o.opt("destination", attrs.destination.as_ref().map(peer));
    o.opt("request", attrs.request.as_ref().map(request));
    o.string_map("contextExtensions", &attrs.context_extensions);
    o.opt(
        "metadataContext",
        attrs.metadata_context.as_ref().map(metadata),
    );
    o.opt(
        "routeMetadataContext",
        attrs.route_metadata_context.as_ref().map(metadata),
    );
    o.opt("tlsSession", attrs.tls_session.as_ref().map(tls_session));
    o.into_value()
}

fn peer(p: &Peer) -> Value {
    let mut o = Obj::new();
    o.opt("address", p.address.as_ref().map(address));
    o.string("service", &p.service);
    o.string_map("labels", &p.labels);
    o.string("principal", &p.principal);
    o.string("certificate", &p.certificate);
    o.into_value()
}

fn address(a: &Address) -> Value {
    let mut o = Obj::new();
    match &a.address {
        Some(address::Address::SocketAddress(s)) => {
            let mut sa = Obj::new();
            if s.protocol != 0 {
                let name = socket_address::Protocol::try_from(s.protocol)
                    .map(|p| Value::from(p.as_str_name()))
                    .unwrap_or_else(|_| Value::from(s.protocol));
                sa.insert("protocol", name);
            }
            sa.string("address", &s.address);
            match &s.port_specifier {
                Some(socket_address::PortSpecifier::PortValue(port)) if *port != 0 => {
                    sa.insert("portValue", Value::from(*port));
                }
                Some(socket_address::PortSpecifier::PortValue(_)) => {
                    // protojson writes a set oneof member even when it is zero.
                    sa.insert("portValue", Value::from(0u32));
                }
                Some(socket_address::PortSpecifier::NamedPort(name)) => {
                    sa.insert("namedPort", Value::from(name.as_str()));
                }
                None => {}
            }
            sa.string("resolverName", &s.resolver_name);
            if s.ipv4_compat {
                sa.insert("ipv4Compat", Value::from(true));
            }
            o.insert("socketAddress", sa.into_value());
        }
        Some(address::Address::Pipe(p)) => {
            let mut po = Obj::new();
            po.string("path", &p.path);
            if p.mode != 0 {
                po.insert("mode", Value::from(p.mode));
            }
            o.insert("pipe", po.into_value());
        }
        Some(address::Address::EnvoyInternalAddress(e)) => {
            let mut eo = Obj::new();
            if let Some(
                crate::proto::core::envoy_internal_address::AddressNameSpecifier::ServerListenerName(
                    name,
                ),
            ) = &e.address_name_specifier
            {
                eo.insert("serverListenerName", Value::from(name.as_str()));
            }
            eo.string("endpointId", &e.endpoint_id);
            o.insert("envoyInternalAddress", eo.into_value());
        }
        None => {}
    }
    o.into_value()
}

fn request(r: &Request) -> Value {
    let mut o = Obj::new();
    if let Some(t) = &r.time {
        o.insert("time", Value::from(rfc3339(t.seconds, t.nanos)));
    }
    o.opt("http", r.http.as_ref().map(http_request));
    o.into_value()
}

fn http_request(h: &HttpRequest) -> Value {
    let mut o = Obj::new();
    o.string("id", &h.id);
    o.string("method", &h.method);
    o.string_map("headers", &h.headers);
    o.opt("headerMap", h.header_map.as_ref().map(header_map));
    o.string("path", &h.path);
    o.string("host", &h.host);
    o.string("scheme", &h.scheme);
    o.string("query", &h.query);
    o.string("fragment", &h.fragment);
    if h.size != 0 {
        o.insert("size", Value::from(h.size.to_string()));
    }
    o.string("protocol", &h.protocol);
    o.string("body", &h.body);
    o.bytes("rawBody", &h.raw_body);
    o.into_value()
}

fn header_map(m: &HeaderMap) -> Value {
    let headers: Vec<Value> = m
        .headers
        .iter()
        .map(|h| {
            let mut o = Obj::new();
            o.string("key", &h.key);
            o.string("value", &h.value);
            o.bytes("rawValue", &h.raw_value);
            o.into_value()
        })
        .collect();
    let mut o = Obj::new();
    if !headers.is_empty() {
        o.insert("headers", Value::from(headers));
    }
    o.into_value()
}

fn tls_session(t: &TlsSession) -> Value {
    let mut o = Obj::new();
    o.string("sni", &t.sni);
    o.into_value()
}

fn metadata(m: &Metadata) -> Value {
    let mut o = Obj::new();
    if !m.filter_metadata.is_empty() {
        let map: BTreeMap<Value, Value> = m
            .filter_metadata
            .iter()
            .map(|(k, v)| (Value::from(k.as_str()), proto_struct(v)))
            .collect();
        o.insert("filterMetadata", Value::from(map));
    }
    if !m.typed_filter_metadata.is_empty() {
        // Arbiter has no type registry for arbitrary Any payloads; it hands
        // the policy the type URL and the encoded bytes.
        let map: BTreeMap<Value, Value> = m
            .typed_filter_metadata
            .iter()
            .map(|(k, any)| {
                let mut a = Obj::new();
                a.insert("@type", Value::from(any.type_url.as_str()));
                a.bytes("value", &any.value);
                (Value::from(k.as_str()), a.into_value())
            })
            .collect();
        o.insert("typedFilterMetadata", Value::from(map));
    }
    o.into_value()
}

/// A `google.protobuf.Struct` as a plain object.
pub fn proto_struct(s: &pbjson_types::Struct) -> Value {
    let map: BTreeMap<Value, Value> = s
        .fields
        .iter()
        .map(|(k, v)| (Value::from(k.as_str()), proto_value(v)))
        .collect();
    Value::from(map)
}

fn proto_value(v: &pbjson_types::Value) -> Value {
    use pbjson_types::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::NumberValue(n)) => Value::from(*n),
        Some(Kind::StringValue(s)) => Value::from(s.as_str()),
        Some(Kind::BoolValue(b)) => Value::from(*b),
        Some(Kind::StructValue(s)) => proto_struct(s),
        Some(Kind::ListValue(l)) => {
            Value::from(l.values.iter().map(proto_value).collect::<Vec<_>>())
        }
    }
}

/// A timestamp in RFC 3339 as protojson writes it: UTC, with 0, 3, 6 or 9
/// fractional digits.
pub fn rfc3339(seconds: i64, nanos: i32) -> String {
    let nanos = u32::try_from(nanos.clamp(0, 999_999_999)).unwrap_or(0);
    let datetime = time::OffsetDateTime::from_unix_timestamp(seconds)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let (year, month, day) = (datetime.year(), u8::from(datetime.month()), datetime.day());
    let (hour, minute, second) = (datetime.hour(), datetime.minute(), datetime.second());
    let fraction = if nanos == 0 {
        String::new()
    } else if nanos % 1_000_000 == 0 {
        format!(".{:03}", nanos / 1_000_000)
    } else if nanos % 1_000 == 0 {
        format!(".{:06}", nanos / 1_000)
    } else {
        format!(".{nanos:09}")
    };
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}{fraction}Z")
}

/// Builds an object without the ceremony of `BTreeMap<Value, Value>`,
/// leaving out what protojson leaves out.
struct Obj(BTreeMap<Value, Value>);

impl Obj {
    fn new() -> Self {
        Self(BTreeMap::new())
    }

    fn insert(&mut self, key: &str, value: Value) {
        self.0.insert(Value::from(key), value);
    }

    fn opt(&mut self, key: &str, value: Option<Value>) {
        if let Some(value) = value {
            self.insert(key, value);
        }
    }

    fn string(&mut self, key: &str, value: &str) {
        if !value.is_empty() {
            self.insert(key, Value::from(value));
        }
    }

    fn bytes(&mut self, key: &str, value: &[u8]) {
        if !value.is_empty() {
            let encoded = base64::engine::general_purpose::STANDARD.encode(value);
            self.insert(key, Value::from(encoded));
        }
    }

    /// A map of strings (a `HashMap` or a `BTreeMap`), left out when empty.
    fn string_map<'a>(
        &mut self,
        key: &str,
        map: impl IntoIterator<Item = (&'a String, &'a String)>,
    ) {
        let object: BTreeMap<Value, Value> = map
            .into_iter()
            .map(|(k, v)| (Value::from(k.as_str()), Value::from(v.as_str())))
            .collect();
        if !object.is_empty() {
            self.insert(key, Value::from(object));
        }
    }

    fn into_value(self) -> Value {
        Value::from(self.0)
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "tests"
)]
mod tests {
    use super::*;
    use crate::context::ParseOptions;

    fn build(ctx: &RequestContext) -> Value {
        super::build(ctx, &Identity::anonymous(), None)
    }
    use crate::proto::auth::CheckRequest;

    /// A CheckRequest that sets every field Arbiter knows of.
    fn full_request() -> CheckRequest {
        let json = r#"{
          "attributes": {
            "source": {
              "address": {"socketAddress": {"address": "10.0.0.7", "portValue": 51234}},
              "service": "frontend", "labels": {"app": "web"},
              "principal": "spiffe://cluster.local/ns/prod/sa/web",
              "certificate": "-----BEGIN%20CERTIFICATE-----"
            },
            "destination": {
              "address": {"socketAddress": {"protocol": "UDP", "address": "10.0.0.8", "namedPort": "http"}}
            },
            "request": {
              "time": "2024-05-06T07:08:09.123456Z",
              "http": {
                "id": "req-1", "method": "POST",
                "headers": {":path": "/api/v1/orders?limit=5", "content-type": "application/json"},
                "headerMap": {"headers": [{"key": "x-raw", "rawValue": "AAEC"}]},
                "path": "/api/v1/orders?limit=5", "host": "shop.example", "scheme": "https",
                "size": "41", "protocol": "HTTP/1.1", "body": "{\"item\": \"book\"}",
                "rawBody": "e30="
              }
            },
            "contextExtensions": {"virtual_host": "shop"},
            "metadataContext": {"filterMetadata": {"envoy.filters.http.jwt_authn": {"sub": "alice", "n": 3, "ok": true, "l": [1, "a", null], "o": {"x": 1.5}}}},
            "routeMetadataContext": {"filterMetadata": {"r": {}}},
            "tlsSession": {"sni": "shop.example"}
          }
        }"#;
        serde_json::from_str(json).expect("valid CheckRequest JSON")
    }

    #[test]
    fn attributes_match_the_protobuf_json_mapping() {
        let request = full_request();
        // pbjson is the oracle, except where it departs from Go's protojson:
        // it writes timestamps with "+00:00" where protojson writes "Z", and
        // every Struct number as a float.
        let mut expected = serde_json::to_value(request.attributes.as_ref().unwrap()).unwrap();
        expected["request"]["time"] = serde_json::json!("2024-05-06T07:08:09.123456Z");
        let built = attributes(request.attributes.as_ref().unwrap());
        let built: serde_json::Value = serde_json::from_str(&built.to_json_str().unwrap()).unwrap();
        assert_eq!(floats(built.clone()), floats(expected));
        assert_eq!(built["request"]["http"]["size"], "41");
        assert_eq!(
            built["source"]["address"]["socketAddress"]["portValue"],
            51234
        );
    }

    fn floats(v: serde_json::Value) -> serde_json::Value {
        use serde_json::Value as J;
        match v {
            J::Number(n) => serde_json::json!(n.as_f64()),
            J::Array(a) => J::Array(a.into_iter().map(floats).collect()),
            J::Object(o) => J::Object(o.into_iter().map(|(k, v)| (k, floats(v))).collect()),
            other => other,
        }
    }

    #[test]
    fn empty_fields_are_left_out() {
        let ctx = RequestContext::from_check(CheckRequest::default(), &ParseOptions::default());
        let doc: serde_json::Value =
            serde_json::from_str(&build(&ctx).to_json_str().unwrap()).unwrap();
        assert_eq!(
            doc,
            serde_json::json!({
                "attributes": {},
                "identity": null,
                "device": null,
                "source": {"address": null, "port": null, "ip": null, "forwarded_for": [], "trusted_hops": 0, "principal": null},
                "destination": {"address": null, "port": null, "principal": null},
                "parsed_path": [""],
                "parsed_query": {},
                "parsed_body": null,
                "truncated_body": false,
                "version": {"ext_authz": "v3", "encoding": "protojson"}
            })
        );
    }

    #[test]
    fn parsed_fields_and_version() {
        let ctx = RequestContext::from_check(full_request(), &ParseOptions::default());
        let doc = build(&ctx);
        assert_eq!(
            doc["parsed_path"],
            Value::from_json_str(r#"["api","v1","orders"]"#).unwrap()
        );
        assert_eq!(
            doc["parsed_query"],
            Value::from_json_str(r#"{"limit":["5"]}"#).unwrap()
        );
        assert_eq!(
            doc["parsed_body"],
            Value::from_json_str(r#"{"item":"book"}"#).unwrap()
        );
        assert_eq!(doc["truncated_body"], Value::from(false));
        assert_eq!(doc["version"]["encoding"], Value::from("protojson"));
    }

    #[test]
    fn invalid_body_is_named_in_body_error() {
        let mut request = full_request();
        let http = request
            .attributes
            .as_mut()
            .and_then(|a| a.request.as_mut())
            .and_then(|r| r.http.as_mut())
            .unwrap();
        http.body = "{broken".into();
        let doc = build(&RequestContext::from_check(
            request,
            &ParseOptions::default(),
        ));
        assert_eq!(doc["parsed_body"], Value::Null);
        assert!(
            doc["body_error"]
                .as_string()
                .unwrap()
                .contains("invalid JSON")
        );
    }

    #[test]
    fn source_destination_and_principals() {
        let ctx = RequestContext::from_check(full_request(), &ParseOptions::default());
        let doc: serde_json::Value =
            serde_json::from_str(&build(&ctx).to_json_str().unwrap()).unwrap();
        assert_eq!(doc["source"]["address"], "10.0.0.7");
        assert_eq!(doc["source"]["port"], 51234);
        assert_eq!(doc["source"]["ip"], "10.0.0.7");
        assert_eq!(
            doc["source"]["principal"],
            serde_json::json!({
                "id": "spiffe://cluster.local/ns/prod/sa/web", "spiffe": true, "trusted": false,
                "trust_domain": "cluster.local", "path": "/ns/prod/sa/web",
                "namespace": "prod", "service_account": "web"
            })
        );
        assert_eq!(doc["destination"]["address"], "10.0.0.8");
        assert_eq!(doc["destination"]["port"], serde_json::Value::Null);
    }

    #[test]
    fn timestamps_use_protojson_precision() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(1_714_979_289, 123_000_000),
            "2024-05-06T07:08:09.123Z"
        );
        assert_eq!(
            rfc3339(1_714_979_289, 123_456_000),
            "2024-05-06T07:08:09.123456Z"
        );
        assert_eq!(rfc3339(1_714_979_289, 1), "2024-05-06T07:08:09.000000001Z");
    }
}
