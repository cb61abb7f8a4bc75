//! Property tests: path and query parsing against their documented
//! semantics, X-Forwarded-For walking, and "no input makes the decision path
//! panic, or allow what the policy denies".

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use arbiter::config::{BodyErrors, Config};
use arbiter::context::source::{parse_hop, resolve};
use arbiter::context::{ParsedPath, ParsedQuery, split_target};
use arbiter::pipeline::Pipeline;
use arbiter::policy::PolicySet;
use arbiter::proto::auth::attribute_context::{HttpRequest, Peer, Request};
use arbiter::proto::auth::{AttributeContext, CheckRequest};
use arbiter::proto::core::{Address, SocketAddress, address, socket_address};
use ipnet::IpNet;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use proptest::prelude::*;

/// A fixed number of cases, and no regression files written into the tree.
fn cases(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn segment() -> impl Strategy<Value = String> {
    // Any text without a slash; unicode, spaces, '%', '+', '?' and '#' included.
    "[^/]{0,12}"
}

proptest! {
    #![proptest_config(cases(512))]

    /// Percent-encoded segments come back decoded, one for one.
    #[test]
    fn encoded_segments_round_trip(segments in prop::collection::vec(segment(), 1..6)) {
        let path: String = segments.iter().map(|s| format!("/{}", utf8_percent_encode(s, NON_ALPHANUMERIC))).collect();
        let (raw_path, _) = split_target(&path);
        let parsed = ParsedPath::parse(raw_path).segments;
        // Leading empty segments are trimmed along with the leading slashes, as in OPA.
        let first = segments.iter().position(|s| !s.is_empty()).unwrap_or(segments.len() - 1);
        prop_assert_eq!(parsed, segments[first..].to_vec());
    }

    /// An encoded slash splits after decoding, as OPA's parser does.
    #[test]
    fn encoded_slash_splits(a in "[a-z]{1,5}", b in "[a-z]{1,5}") {
        let parsed = ParsedPath::parse(&format!("/{a}%2F{b}")).segments;
        prop_assert_eq!(parsed, vec![a, b]);
    }

    /// Any string at all splits at its first `?` (before any `#`), and both
    /// halves parse: segments hold no `/`, and a path without escapes comes
    /// back as its own text split on `/`; the query keeps no pair with `;`
    /// and never more values than it has pairs.
    #[test]
    fn any_target_parses(target in ".{0,64}") {
        let (raw_path, raw_query) = split_target(&target);
        let before_fragment = target.split('#').next().unwrap_or_default();
        prop_assert!(!raw_path.contains('?') && !raw_path.contains('#'));
        if raw_query.is_empty() {
            let with_mark = format!("{}?", raw_path);
            prop_assert!(before_fragment == raw_path || before_fragment == with_mark);
        } else {
            prop_assert_eq!(format!("{raw_path}?{raw_query}"), before_fragment);
        }
        let segments = ParsedPath::parse(raw_path).segments;
        prop_assert!(!segments.is_empty());
        prop_assert!(segments.iter().all(|s| !s.contains('/')));
        if !raw_path.contains('%') {
            let plain: Vec<String> = raw_path.trim_start_matches('/').split('/').map(str::to_owned).collect();
            prop_assert_eq!(segments, plain);
        }
        let params = ParsedQuery::parse(raw_query).params;
        let values: usize = params.values().map(Vec::len).sum();
        prop_assert!(values <= raw_query.split('&').count());
        prop_assert!(params.keys().all(|k| !k.contains('&')));
    }

    #[test]
    fn malformed_escapes_are_kept(prefix in "[a-z]{0,5}", bad in prop_oneof!["%[g-z][0-9a-z]", "%[0-9a-f]", Just("%".to_owned())]) {
        let parsed = ParsedPath::parse(&format!("/{prefix}{bad}")).segments;
        prop_assert_eq!(parsed, vec![format!("{prefix}{bad}")]);
    }

    /// Pairs encoded as a form come back grouped by name, values in order.
    #[test]
    fn query_round_trips(pairs in prop::collection::vec(("[^;]{0,8}", "[^;]{0,8}"), 0..8)) {
        let query: Vec<String> = pairs
            .iter()
            .map(|(k, v)| format!("{}={}", utf8_percent_encode(k, NON_ALPHANUMERIC), utf8_percent_encode(v, NON_ALPHANUMERIC)))
            .collect();
        let mut want: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, v) in &pairs {
            want.entry(k.clone()).or_default().push(v.clone());
        }
        prop_assert_eq!(ParsedQuery::parse(&query.join("&")).params, want);
    }

    /// Go's `url.ParseQuery` rules over a mix of good and bad pairs: a pair
    /// with `;` or an invalid escape (`%` not followed by two hex digits)
    /// is dropped from the query and the others kept in order; empty pairs
    /// are skipped; `+` is a space; a form body fails on the first bad pair.
    #[test]
    fn query_follows_go_parse_query(pairs in prop::collection::vec(query_pair(), 0..10)) {
        let raw: Vec<&str> = pairs.iter().map(|p| p.raw.as_str()).collect();
        let raw = raw.join("&");
        let mut want: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for pair in &pairs {
            if let Some((key, value)) = &pair.decoded {
                want.entry(key.clone()).or_default().push(value.clone());
            }
        }
        prop_assert_eq!(&ParsedQuery::parse(&raw).params, &want);
        let any_bad = pairs.iter().any(|p| p.decoded.is_none() && !p.raw.is_empty());
        match ParsedQuery::parse_form(&raw) {
            Ok(form) => {
                prop_assert!(!any_bad, "form {raw:?} with a bad pair parsed");
                prop_assert_eq!(form.params, want);
            }
            Err(error) => prop_assert!(any_bad, "form {raw:?} refused: {error}"),
        }
    }

    /// `+` is a space in a query, and a pair with `;` is skipped, as Go's ParseQuery.
    #[test]
    fn query_plus_and_semicolon(word in "[a-z]{1,5}") {
        let parsed = ParsedQuery::parse(&format!("a={word}+{word}&b=1;2")).params;
        prop_assert_eq!(parsed.get("a").cloned(), Some(vec![format!("{word} {word}")]));
        prop_assert!(!parsed.contains_key("b"));
    }
}

/// One `&`-separated pair as written, and what `url.ParseQuery` makes of it
/// (`None`: dropped, and an error for a form body; an empty pair is
/// skipped without error).
#[derive(Debug, Clone)]
struct QueryPair {
    raw: String,
    decoded: Option<(String, String)>,
}

fn query_pair() -> impl Strategy<Value = QueryPair> {
    let word = "[a-zA-Z0-9._~-]{0,4}";
    let good = (word, word, any::<u8>(), any::<bool>(), any::<bool>()).prop_map(
        |(key, value, byte, escaped, spaced)| {
            let (raw_value, value) = match (escaped, spaced) {
                (true, _) if byte.is_ascii() => (
                    format!("{value}%{byte:02x}"),
                    format!("{value}{}", char::from(byte)),
                ),
                (_, true) => (format!("{value}+{value}"), format!("{value} {value}")),
                _ => (value.clone(), value),
            };
            QueryPair {
                raw: format!("{key}={raw_value}"),
                decoded: Some((key, value)),
            }
        },
    );
    let no_value = "[a-z]{1,4}".prop_map(|key| QueryPair {
        raw: key.clone(),
        decoded: Some((key, String::new())),
    });
    let bad_escape = (
        word,
        prop_oneof!["%", "%[0-9a-f]", "%[g-z][0-9a-z]", "%[0-9a-f][g-z]"],
        any::<bool>(),
    )
        .prop_map(|(word, escape, in_key)| QueryPair {
            raw: if in_key {
                format!("{word}{escape}=v")
            } else {
                format!("k={word}{escape}")
            },
            decoded: None,
        });
    let semicolon = (word, word).prop_map(|(a, b)| QueryPair {
        raw: format!("{a};{b}"),
        decoded: None,
    });
    let empty = Just(QueryPair {
        raw: String::new(),
        decoded: None,
    });
    prop_oneof![4 => good, 1 => no_value, 2 => bad_escape, 1 => semicolon, 1 => empty]
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        (0u8..4, any::<u8>()).prop_map(|(a, b)| IpAddr::from([10, a, b, 1])),
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u16; 8]>().prop_map(IpAddr::from),
    ]
}

fn hop() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => ip().prop_map(|ip| ip.to_string()),
        1 => ip().prop_map(|ip| match ip {
            IpAddr::V4(v4) => format!("{v4}:8080"),
            IpAddr::V6(v6) => format!("[{v6}]:443"),
        }),
        1 => "[^,]{0,10}",
    ]
}

proptest! {
    #![proptest_config(cases(1024))]

    #[test]
    fn forwarded_for_is_believed_only_through_trusted_hops(
        peer in ip(),
        chain in prop::collection::vec(hop(), 0..6),
        trust_ten in any::<bool>(),
    ) {
        let trusted: Vec<IpNet> = if trust_ten { vec!["10.0.0.0/8".parse().unwrap()] } else { Vec::new() };
        let is_trusted = |ip: IpAddr| trusted.iter().any(|n| n.contains(&ip));
        let header = chain.join(",");
        let source = resolve(Some(peer), None, Some(&header), &trusted);
        let client = source.ip.unwrap();
        let entries = source.forwarded_for.clone();
        if !is_trusted(peer) {
            prop_assert_eq!(client, peer);
            prop_assert_eq!(source.trusted_hops, 0);
        }
        // Every hop walked through, peer included, was a trusted proxy...
        let walked = source.trusted_hops;
        prop_assert!(walked <= entries.len());
        if walked > 0 {
            prop_assert!(is_trusted(peer));
            for entry in entries.iter().rev().take(walked - 1) {
                prop_assert!(is_trusted(parse_hop(entry).unwrap()));
            }
            // ...and the client is the entry the last trusted proxy reported.
            prop_assert_eq!(Some(client), parse_hop(&entries[entries.len() - walked]));
        } else {
            prop_assert_eq!(client, peer);
        }
    }
}

/// A policy that never says exactly `true`: "allowed" is the request's
/// `x-allow` header, a string such as "true", and the rest echoes the request.
const DENY_ALL: &str = r#"
package envoy.authz
default allow := false
allow := {
  "allowed": input.attributes.request.http.headers["x-allow"],
  "headers": {"x-path": object.get(input.attributes.request.http, "path", "")},
  "dynamic_metadata": {"body": input.parsed_body, "source": input.source},
}
"#;

const ALLOW_ALL: &str = r#"
package envoy.authz
default allow := false
allow := {
  "allowed": input.attributes.request.http.headers["x-allow"] == "true",
  "headers": {"x-path": object.get(input.attributes.request.http, "path", "")},
  "dynamic_metadata": {"body": input.parsed_body, "source": input.source},
}
"#;

fn check_request() -> impl Strategy<Value = CheckRequest> {
    let content_type = prop_oneof![
        Just("application/json".to_owned()),
        Just("application/x-www-form-urlencoded".to_owned()),
        Just("multipart/form-data; boundary=X".to_owned()),
        Just("text/plain".to_owned()),
        ".{0,20}",
    ];
    let body = prop_oneof![
        Just("{\"allowed\": true}".to_owned()),
        Just("{\"allowed\": \"true\"}".to_owned()),
        Just("allowed=true".to_owned()),
        Just(
            "--X\r\nContent-Disposition: form-data; name=\"allowed\"\r\n\r\ntrue\r\n--X--\r\n"
                .to_owned()
        ),
        ".{0,64}",
    ];
    (
        ".{0,40}",
        prop::collection::btree_map("[a-z:-]{1,12}", ".{0,30}", 0..8),
        content_type,
        body,
        prop::collection::vec(any::<u8>(), 0..32),
        ".{0,20}",
        ".{0,60}",
    )
        .prop_map(
            |(path, mut headers, content_type, body, raw, address, principal)| {
                headers.insert("content-type".into(), content_type);
                headers.insert("x-allow".into(), "true".into());
                CheckRequest {
                    attributes: Some(AttributeContext {
                        source: Some(Peer {
                            address: Some(Address {
                                address: Some(address::Address::SocketAddress(SocketAddress {
                                    address,
                                    port_specifier: Some(socket_address::PortSpecifier::PortValue(
                                        1,
                                    )),
                                    ..Default::default()
                                })),
                            }),
                            principal,
                            ..Default::default()
                        }),
                        request: Some(Request {
                            time: None,
                            http: Some(HttpRequest {
                                method: "POST".into(),
                                path,
                                headers: headers.into_iter().collect(),
                                body,
                                raw_body: raw,
                                ..Default::default()
                            }),
                        }),
                        ..Default::default()
                    }),
                }
            },
        )
}

#[test]
fn no_input_makes_the_decision_path_panic_or_allow_a_deny() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Bodies that do not parse go to the policy too, so that it sees every
    // shape of input; with the default they are denied before it (below).
    let mut config = Config::default();
    config.policy.body_errors = BodyErrors::PassToPolicy;
    let policies =
        PolicySet::from_sources(&[("deny.rego", DENY_ALL)], None, &config.policy).unwrap();
    let shared = runtime
        .block_on(async { Arc::new(Pipeline::new(&config, policies, &reqwest::Client::new())) });
    let defaults = Config::default();
    let policies =
        PolicySet::from_sources(&[("deny.rego", DENY_ALL)], None, &defaults.policy).unwrap();
    let by_default = runtime
        .block_on(async { Arc::new(Pipeline::new(&defaults, policies, &reqwest::Client::new())) });
    // The control: the same requests through a policy that reads the same
    // header as a boolean are all allowed, so the denies above come from
    // the policy's ill-typed answer, not from a path that denies anything.
    let control =
        PolicySet::from_sources(&[("allow.rego", ALLOW_ALL)], None, &config.policy).unwrap();
    let control = runtime
        .block_on(async { Arc::new(Pipeline::new(&config, control, &reqwest::Client::new())) });
    let mut runner = proptest::test_runner::TestRunner::new(cases(512));
    runner
        .run(&check_request(), |request| {
            let response = runtime.block_on(shared.check(request.clone()));
            let status = response
                .status
                .as_ref()
                .map(|s| (s.code, s.message.as_str()));
            prop_assert_eq!(status, Some((7, "invalid_result")), "{:?}", response);
            let response = runtime.block_on(by_default.check(request.clone()));
            let status = response
                .status
                .as_ref()
                .map(|s| (s.code, s.message.as_str()));
            prop_assert!(
                matches!(status, Some((7, "invalid_result" | "request_parse_error"))),
                "{:?}",
                response
            );
            let response = runtime.block_on(control.check(request));
            let status = response.status.as_ref().map(|s| s.code);
            prop_assert_eq!(status, Some(0), "{:?}", response);
            Ok(())
        })
        .unwrap();
}
