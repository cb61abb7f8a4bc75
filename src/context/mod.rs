//! The request as Arbiter understands it: Envoy's attributes plus the path,
//! query and body parsed the way OPA's Envoy plugin parses them. Parsing is
//! total: a body that does not parse is reported in the context
//! ([`ParsedBody::Invalid`]) for the pipeline to deny, never an error here.
//!
//! This module does no I/O and never panics on request data.

pub mod source;
pub mod spiffe;

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use ipnet::IpNet;
use percent_encoding::percent_decode_str;
use regorus::Value;

use crate::proto::auth::attribute_context::Peer;
use crate::proto::auth::{AttributeContext, CheckRequest, attribute_context::HttpRequest};
use crate::proto::core::{address, socket_address};
pub use source::Source;
pub use spiffe::{Principal, SpiffeId};

/// Options that change how a request is parsed.
#[derive(Debug, Clone, Default)]
pub struct ParseOptions {
    /// Leave the body unparsed (`parsed_body: null`), as OPA's `skip-request-body-parse`.
    pub skip_body: bool,
    /// Proxies whose `X-Forwarded-For` entries are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// SPIFFE trust domains whose IDs are marked trusted.
    pub trust_domains: Arc<[String]>,
}

impl ParseOptions {
    pub fn from_config(config: &crate::config::Config) -> Self {
        Self {
            skip_body: config.policy.skip_request_body_parse,
            trusted_proxies: config.context.trusted_proxies.clone(),
            trust_domains: config.context.trust_domains.as_slice().into(),
        }
    }

    /// For requests a proxy forwarded for authorization (forward-auth):
    /// the configured proxies and, unless `[http] trust_loopback = false`,
    /// loopback, where such a proxy usually runs.
    pub fn forwarded(config: &crate::config::Config) -> Self {
        let mut options = Self::from_config(config);
        if config.http.trust_loopback {
            options.trusted_proxies.extend(LOOPBACK.iter().copied());
        }
        options
    }
}

/// 127.0.0.0/8 and ::1, trusted as forward-auth callers by default.
pub const LOOPBACK: [IpNet; 2] = [
    IpNet::V4(ipnet::Ipv4Net::new_assert(
        std::net::Ipv4Addr::new(127, 0, 0, 0),
        8,
    )),
    IpNet::V6(ipnet::Ipv6Net::new_assert(
        std::net::Ipv6Addr::LOCALHOST,
        128,
    )),
];

/// One CheckRequest, parsed once at the edge. The query and the peers'
/// principals only the input document reads: they are parsed from
/// `attributes` the first time it asks, which is never for a policy that
/// does not read them (so `attributes` must not change after parsing).
#[derive(Debug)]
pub struct RequestContext {
    pub attributes: AttributeContext,
    pub path: ParsedPath,
    pub body: ParsedBody,
    pub source: Source,
    trust_domains: Arc<[String]>,
    query: OnceLock<ParsedQuery>,
    source_principal: OnceLock<Option<Principal>>,
    destination_principal: OnceLock<Option<Principal>>,
}

impl RequestContext {
    /// Parses a CheckRequest. Total: anything Envoy (or an attacker talking
    /// gRPC directly) can send yields a context, never an error or a panic.
    pub fn from_check(request: CheckRequest, options: &ParseOptions) -> Self {
        let attributes = request.attributes.unwrap_or_default();
        let http = attributes.request.as_ref().and_then(|r| r.http.as_ref());
        let target = http.map(|h| h.path.as_str()).unwrap_or_default();
        let (raw_path, _) = split_target(target);
        let body = match http {
            Some(http) if !options.skip_body => parse_body(http),
            _ => ParsedBody::None,
        };
        let (peer, peer_port) = peer_address(attributes.source.as_ref());
        let xff = http.and_then(|h| header(h, "x-forwarded-for"));
        let source = source::resolve(peer, peer_port, xff, &options.trusted_proxies);
        Self {
            path: ParsedPath::parse(raw_path),
            body,
            source,
            trust_domains: Arc::clone(&options.trust_domains),
            query: OnceLock::new(),
            source_principal: OnceLock::new(),
            destination_principal: OnceLock::new(),
            attributes,
        }
    }

    /// The query string of the request target, parsed.
    pub fn query(&self) -> &ParsedQuery {
        self.query.get_or_init(|| {
            let target = self.http().map(|h| h.path.as_str()).unwrap_or_default();
            ParsedQuery::parse(split_target(target).1)
        })
    }

    /// The principal of the peer that sent the request to Envoy (its mTLS
    /// identity), if Envoy reported one.
    pub fn source_principal(&self) -> Option<&Principal> {
        self.source_principal
            .get_or_init(|| self.principal(self.attributes.source.as_ref()))
            .as_ref()
    }

    /// The principal Envoy itself presented on the connection.
    pub fn destination_principal(&self) -> Option<&Principal> {
        self.destination_principal
            .get_or_init(|| self.principal(self.attributes.destination.as_ref()))
            .as_ref()
    }

    fn principal(&self, peer: Option<&Peer>) -> Option<Principal> {
        let peer = peer?;
        let id = if peer.principal.is_empty() {
            spiffe::uri_san_from_certificate(&peer.certificate)?
        } else {
            peer.principal.clone()
        };
        Some(Principal::new(&id, &self.trust_domains))
    }

    /// The HTTP request attributes, if Envoy sent any.
    pub fn http(&self) -> Option<&HttpRequest> {
        self.attributes.request.as_ref()?.http.as_ref()
    }

    /// A request header by its lower-case name, from `headers` or, with
    /// Envoy's `encode_raw_headers`, from `header_map`.
    pub fn header(&self, name: &str) -> Option<&str> {
        header(self.http()?, name)
    }
}

fn peer_address(peer: Option<&Peer>) -> (Option<std::net::IpAddr>, Option<u32>) {
    match peer
        .and_then(|p| p.address.as_ref())
        .and_then(|a| a.address.as_ref())
    {
        Some(address::Address::SocketAddress(s)) => {
            let port = match s.port_specifier {
                Some(socket_address::PortSpecifier::PortValue(port)) => Some(port),
                _ => None,
            };
            (s.address.parse().ok(), port)
        }
        _ => (None, None),
    }
}

fn header<'a>(http: &'a HttpRequest, name: &str) -> Option<&'a str> {
    if let Some(value) = http.headers.get(name) {
        return Some(value);
    }
    let map = http.header_map.as_ref()?;
    map.headers
        .iter()
        .find(|h| h.key.eq_ignore_ascii_case(name))
        .and_then(|h| {
            if h.raw_value.is_empty() {
                Some(h.value.as_str())
            } else {
                std::str::from_utf8(&h.raw_value).ok()
            }
        })
}

/// Splits a request target into path and query the way Go's `url.Parse`
/// does: the fragment is cut first, then the query.
pub fn split_target(target: &str) -> (&str, &str) {
    let without_fragment = target.split_once('#').map_or(target, |(before, _)| before);
    without_fragment
        .split_once('?')
        .unwrap_or((without_fragment, ""))
}

/// `parsed_path`: the path percent-decoded, leading slashes trimmed, split on
/// `/` (after decoding, so `%2F` splits too, as in OPA). A malformed escape
/// such as `%zz` is kept as written instead of failing the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedPath {
    pub segments: Vec<String>,
}

impl ParsedPath {
    pub fn parse(raw_path: &str) -> Self {
        let decoded = percent_decode_str(raw_path).decode_utf8_lossy();
        let segments = decoded
            .trim_start_matches('/')
            .split('/')
            .map(str::to_owned)
            .collect();
        Self { segments }
    }
}

/// `parsed_query`: parameter name to every value it was given, in order.
///
/// Semantics are those of Go's `url.ParseQuery`, which OPA uses: pairs split
/// on `&`, `+` is a space, a pair without `=` has the value `""`, empty pairs
/// are skipped, and a pair containing `;` or an invalid escape (`%zz`, a
/// lone `%`) is dropped with the other pairs kept. The query string ignores
/// those errors, as OPA does; a form body does not ([`QueryError`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedQuery {
    pub params: BTreeMap<String, Vec<String>>,
}

/// The first pair `url.ParseQuery` would have refused, worded as Go words it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("invalid semicolon separator in query")]
    Semicolon,
    #[error("invalid URL escape {0:?}")]
    Escape(String),
}

impl ParsedQuery {
    /// The query string of a request target: pairs in error are dropped.
    pub fn parse(raw_query: &str) -> Self {
        Self::parse_reporting(raw_query).0
    }

    /// An `application/x-www-form-urlencoded` body: any pair in error fails it.
    pub fn parse_form(body: &str) -> Result<Self, QueryError> {
        match Self::parse_reporting(body) {
            (query, None) => Ok(query),
            (_, Some(error)) => Err(error),
        }
    }

    fn parse_reporting(raw_query: &str) -> (Self, Option<QueryError>) {
        let mut params: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut first_error = None;
        for pair in raw_query.split('&') {
            if pair.contains(';') {
                first_error.get_or_insert(QueryError::Semicolon);
                continue;
            }
            if pair.is_empty() {
                continue;
            }
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match (query_unescape(key), query_unescape(value)) {
                (Ok(key), Ok(value)) => params.entry(key).or_default().push(value),
                (Err(error), _) | (_, Err(error)) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        (Self { params }, first_error)
    }
}

/// Go's `url.QueryUnescape`: `+` is a space, and `%` must start two hex digits.
fn query_unescape(s: &str) -> Result<String, QueryError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let hex = |at: usize| bytes.get(at).and_then(|d| (*d as char).to_digit(16));
                let (Some(high), Some(low)) = (hex(i + 1), hex(i + 2)) else {
                    let end = (i + 3).min(bytes.len());
                    let shown = String::from_utf8_lossy(bytes.get(i..end).unwrap_or_default());
                    return Err(QueryError::Escape(shown.into_owned()));
                };
                // Two hex digits are at most 0xff.
                out.push(u8::try_from(high * 16 + low).unwrap_or(u8::MAX));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// `parsed_body` and `truncated_body`.
#[derive(Debug, Clone, PartialEq)]
pub enum ParsedBody {
    /// No body, an unsupported content type, or parsing switched off.
    None,
    /// The body parsed to a value.
    Parsed(Value),
    /// `content-length` (or Envoy's partial-body flag) says Envoy sent only part of the body.
    Truncated,
    /// The body claims a supported type but does not parse. As in OPA 1.x
    /// the request is denied (400, `request_parse_error`) unless
    /// `[policy] body_errors = "pass_to_policy"` hands the policy
    /// `parsed_body: null` and the reason in `body_error`.
    Invalid(String),
}

/// Header Envoy sets when `allow_partial_message` forwarded a partial body.
const PARTIAL_BODY_HEADER: &str = "x-envoy-auth-partial-body";

fn parse_body(http: &HttpRequest) -> ParsedBody {
    let Some(content_type) = header(http, "content-type") else {
        return ParsedBody::None;
    };
    let kind = if content_type.contains("application/json") {
        BodyKind::Json
    } else if content_type.contains("application/x-www-form-urlencoded") {
        BodyKind::Form
    } else if content_type.contains("multipart/form-data") {
        BodyKind::Multipart
    } else {
        return ParsedBody::None;
    };
    let body: &[u8] = if http.body.is_empty() {
        &http.raw_body
    } else {
        http.body.as_bytes()
    };
    if body.is_empty() {
        return ParsedBody::None;
    }
    match is_truncated(http, body.len()) {
        Ok(true) => return ParsedBody::Truncated,
        Ok(false) => {}
        Err(reason) => return ParsedBody::Invalid(reason),
    }
    let parsed = match kind {
        BodyKind::Json => parse_json(body),
        BodyKind::Form => ParsedQuery::parse_form(&String::from_utf8_lossy(body))
            .map(|form| query_to_value(&form))
            .map_err(|e| format!("invalid form body: {e}")),
        BodyKind::Multipart => parse_multipart(content_type, body),
    };
    match parsed {
        Ok(value) => ParsedBody::Parsed(value),
        Err(reason) => ParsedBody::Invalid(reason),
    }
}

enum BodyKind {
    Json,
    Form,
    Multipart,
}

fn is_truncated(http: &HttpRequest, received: usize) -> Result<bool, String> {
    if header(http, PARTIAL_BODY_HEADER).is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok(true);
    }
    let Some(length) = header(http, "content-length") else {
        return Ok(false);
    };
    let declared: i64 = length
        .trim()
        .parse()
        .map_err(|_| "invalid content-length header".to_owned())?;
    let received = i64::try_from(received).unwrap_or(i64::MAX);
    Ok(declared != -1 && declared > received)
}

fn parse_json(body: &[u8]) -> Result<Value, String> {
    let text = std::str::from_utf8(body).map_err(|_| "JSON body is not valid UTF-8".to_owned())?;
    Value::from_json_str(text).map_err(|e| format!("invalid JSON body: {e}"))
}

/// Converts a parsed query or form into `{name: [values]}`.
pub fn query_to_value(query: &ParsedQuery) -> Value {
    let map: BTreeMap<Value, Value> = query
        .params
        .iter()
        .map(|(k, vs)| {
            let values: Vec<Value> = vs.iter().map(|v| Value::from(v.as_str())).collect();
            (Value::from(k.as_str()), Value::from(values))
        })
        .collect();
    Value::from(map)
}

/// `multipart/form-data` into `{name: [values]}`: parts with a JSON content
/// type are parsed, others kept as strings, unnamed parts skipped (as OPA).
fn parse_multipart(content_type: &str, body: &[u8]) -> Result<Value, String> {
    use futures_util::FutureExt;

    let boundary = match multer::parse_boundary(content_type) {
        Ok(boundary) => boundary,
        // OPA ignores a multipart body without a boundary rather than failing.
        Err(_) => return Ok(Value::Null),
    };
    let chunk = bytes::Bytes::copy_from_slice(body);
    let stream = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(chunk)]);
    let mut multipart = multer::Multipart::new(stream, boundary);
    let mut fields: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    // The whole body is already in memory, so every future here is ready at
    // once; `now_or_never` drives it without an executor.
    loop {
        let next = multipart
            .next_field()
            .now_or_never()
            .ok_or("multipart parser stalled")?;
        let field = match next {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) => return Err(format!("invalid multipart body: {e}")),
        };
        let Some(name) = field.name().map(str::to_owned) else {
            continue;
        };
        let is_json = field
            .content_type()
            .is_some_and(|m| m.essence_str() == "application/json");
        let data = field
            .bytes()
            .now_or_never()
            .ok_or("multipart parser stalled")?
            .map_err(|e| format!("invalid multipart body: {e}"))?;
        let value = if is_json {
            parse_json(&data)?
        } else {
            Value::from(String::from_utf8_lossy(&data).into_owned())
        };
        fields.entry(name).or_default().push(value);
    }
    let map: BTreeMap<Value, Value> = fields
        .into_iter()
        .map(|(k, vs)| (Value::from(k), Value::from(vs)))
        .collect();
    Ok(Value::from(map))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "tests")]
mod tests {
    use super::*;
    use crate::proto::auth::attribute_context::Request;

    fn segments(path: &str) -> Vec<String> {
        ParsedPath::parse(split_target(path).0).segments
    }

    fn query(target: &str) -> BTreeMap<String, Vec<String>> {
        ParsedQuery::parse(split_target(target).1).params
    }

    fn request(headers: &[(&str, &str)], body: &str) -> CheckRequest {
        let http = HttpRequest {
            method: "POST".into(),
            path: "/".into(),
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            body: body.into(),
            ..Default::default()
        };
        CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(Request {
                    time: None,
                    http: Some(http),
                }),
                ..Default::default()
            }),
        }
    }

    fn body_of(headers: &[(&str, &str)], body: &str) -> ParsedBody {
        RequestContext::from_check(request(headers, body), &ParseOptions::default()).body
    }

    /// With Envoy's `encode_raw_headers` a value is bytes: one that is not
    /// UTF-8 reads as absent (a token or device id is never a prefix of it).
    #[test]
    fn a_raw_header_value_that_is_not_utf8_reads_as_absent() {
        let mut check = request(&[], "");
        let raw = |key: &str, value: &[u8]| crate::proto::core::HeaderValue {
            key: key.into(),
            value: String::new(),
            raw_value: value.to_vec(),
        };
        if let Some(http) = check
            .attributes
            .as_mut()
            .and_then(|a| a.request.as_mut())
            .and_then(|r| r.http.as_mut())
        {
            http.header_map = Some(crate::proto::core::HeaderMap {
                headers: vec![raw("x-user", b"alice\xff"), raw("X-Device-Id", b"dev-1")],
            });
        }
        let ctx = RequestContext::from_check(check, &ParseOptions::default());
        assert_eq!(ctx.header("x-user"), None);
        assert_eq!(ctx.header("x-device-id"), Some("dev-1"));
    }

    #[test]
    fn path_is_split_like_opa() {
        assert_eq!(segments("/"), vec![""]);
        assert_eq!(segments(""), vec![""]);
        assert_eq!(segments("/api/users/42?x=1"), vec!["api", "users", "42"]);
        assert_eq!(segments("/a%20b/c"), vec!["a b", "c"]);
        assert_eq!(segments("/a%2Fb"), vec!["a", "b"]);
        assert_eq!(segments("//double"), vec!["double"]);
        assert_eq!(segments("/trailing/"), vec!["trailing", ""]);
        assert_eq!(segments("/plus+sign"), vec!["plus+sign"]);
        assert_eq!(segments("/x#frag?notquery"), vec!["x"]);
    }

    #[test]
    fn malformed_path_escapes_are_kept_not_fatal() {
        assert_eq!(segments("/bad%zz/%"), vec!["bad%zz", "%"]);
        assert_eq!(segments("/%ff"), vec!["\u{fffd}"]);
    }

    #[test]
    fn a_query_pair_with_an_invalid_escape_is_dropped_and_the_rest_kept() {
        let q = query("/?a=%zz&b=1&c%=2&d=%4&e=%41&f=%");
        assert_eq!(q.keys().collect::<Vec<_>>(), ["b", "e"]);
        assert_eq!(q["e"], vec!["A"]);
    }

    #[test]
    fn form_bodies_fail_where_go_parse_query_fails() {
        let form = |body: &str| ParsedQuery::parse_form(body).map(|q| q.params);
        assert_eq!(form("a=1&a=2&b=x+y").unwrap()["a"], vec!["1", "2"]);
        assert_eq!(
            form("a=1&b=%zz&c=%"),
            Err(QueryError::Escape("%zz".to_owned()))
        );
        assert_eq!(form("a=%"), Err(QueryError::Escape("%".to_owned())));
        assert_eq!(form("a=%4"), Err(QueryError::Escape("%4".to_owned())));
        assert_eq!(form("a=1;b=2"), Err(QueryError::Semicolon));
        assert_eq!(
            QueryError::Escape("%zz".into()).to_string(),
            r#"invalid URL escape "%zz""#
        );
        let body = body_of(
            &[("content-type", "application/x-www-form-urlencoded")],
            "name=ok&bad=%zz",
        );
        assert!(matches!(body, ParsedBody::Invalid(ref e) if e.contains("invalid URL escape")));
    }

    #[test]
    fn query_is_parsed_like_go() {
        let q = query("/p?a=1&b=two+words&a=3&flag&=v&&c=%26");
        assert_eq!(q["a"], vec!["1", "3"]);
        assert_eq!(q["b"], vec!["two words"]);
        assert_eq!(q["flag"], vec![""]);
        assert_eq!(q[""], vec!["v"]);
        assert_eq!(q["c"], vec!["&"]);
        assert!(query("/p?x=1;y=2").is_empty());
        assert!(query("/p").is_empty());
    }

    #[test]
    fn json_body() {
        let body = body_of(&[("content-type", "application/json")], r#"{"a": [1, 2]}"#);
        assert_eq!(
            body,
            ParsedBody::Parsed(Value::from_json_str(r#"{"a":[1,2]}"#).unwrap())
        );
    }

    #[test]
    fn malformed_json_body_is_reported_not_fatal() {
        let body = body_of(&[("content-type", "application/json")], "{nope");
        assert!(matches!(body, ParsedBody::Invalid(ref e) if e.contains("invalid JSON")));
    }

    #[test]
    fn truncated_body_by_content_length_or_partial_flag() {
        let body = body_of(
            &[
                ("content-type", "application/json"),
                ("content-length", "100"),
            ],
            "{\"a\":",
        );
        assert_eq!(body, ParsedBody::Truncated);
        let body = body_of(
            &[
                ("content-type", "application/json"),
                ("x-envoy-auth-partial-body", "true"),
            ],
            "{}",
        );
        assert_eq!(body, ParsedBody::Truncated);
        let body = body_of(
            &[
                ("content-type", "application/json"),
                ("content-length", "2"),
            ],
            "{}",
        );
        assert!(matches!(body, ParsedBody::Parsed(_)));
        let body = body_of(
            &[
                ("content-type", "application/json"),
                ("content-length", "x"),
            ],
            "{}",
        );
        assert!(matches!(body, ParsedBody::Invalid(_)));
    }

    #[test]
    fn form_body() {
        let body = body_of(
            &[("content-type", "application/x-www-form-urlencoded")],
            "user=alice&role=a&role=b",
        );
        let want = Value::from_json_str(r#"{"user":["alice"],"role":["a","b"]}"#).unwrap();
        assert_eq!(body, ParsedBody::Parsed(want));
    }

    #[test]
    fn multipart_body() {
        let payload = "--XYZ\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nalice\r\n\
--XYZ\r\nContent-Disposition: form-data; name=\"meta\"\r\nContent-Type: application/json\r\n\r\n{\"k\": true}\r\n\
--XYZ\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nbob\r\n--XYZ--\r\n";
        let body = body_of(
            &[("content-type", "multipart/form-data; boundary=XYZ")],
            payload,
        );
        let want = Value::from_json_str(r#"{"name":["alice","bob"],"meta":[{"k":true}]}"#).unwrap();
        assert_eq!(body, ParsedBody::Parsed(want));
        let broken = body_of(
            &[("content-type", "multipart/form-data; boundary=XYZ")],
            "--XYZ\r\nno end",
        );
        assert!(matches!(broken, ParsedBody::Invalid(_)), "{broken:?}");
        let no_boundary = body_of(&[("content-type", "multipart/form-data")], payload);
        assert_eq!(no_boundary, ParsedBody::Parsed(Value::Null));
    }

    #[test]
    fn other_content_types_are_not_parsed() {
        assert_eq!(
            body_of(&[("content-type", "text/plain")], "x"),
            ParsedBody::None
        );
        assert_eq!(body_of(&[], "{}"), ParsedBody::None);
        assert_eq!(
            body_of(&[("content-type", "application/json")], ""),
            ParsedBody::None
        );
    }
}
