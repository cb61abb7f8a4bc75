//! The `net.cidr_*` built-ins with OPA's semantics: `net.cidr_intersects`,
//! `net.cidr_merge` and `net.cidr_contains_matches`, which regorus lacks,
//! and `net.cidr_contains`, which regorus has with other semantics for
//! IPv4-mapped IPv6 addresses.
//!
//! OPA answers with Go's `net` package, which reads an IPv4-mapped IPv6
//! address (`::ffff:10.1.2.3`) as the IPv4 address it maps, and an
//! IPv4-mapped network of prefix 96 or more (`::ffff:10.0.0.0/104`) as the
//! IPv4 network (`10.0.0.0/8`). Everything here goes through that reading,
//! so `10.0.0.0/8` contains `::ffff:10.1.2.3`, and `::/0` does not.

use std::collections::BTreeSet;

use anyhow::{anyhow, bail};
use ipnet::IpNet;
use regorus::Value;

use crate::address;

/// A CIDR, or a bare address as a single-host network.
fn parse_net(s: &str) -> anyhow::Result<IpNet> {
    address::parse_address_or_network(s).ok_or_else(|| anyhow!("{s:?} is not a CIDR or IP address"))
}

fn parse_cidr(s: &str) -> anyhow::Result<IpNet> {
    address::parse_network(s).ok_or_else(|| anyhow!("{s:?} is not a CIDR"))
}

/// `net.cidr_contains(cidr, cidr_or_ip)`: whether the second operand (an
/// address, or every address of a CIDR) lies in the first.
pub fn cidr_contains(args: Vec<Value>) -> anyhow::Result<Value> {
    let (Some(a), Some(b)) = (args.first(), args.get(1)) else {
        bail!("net.cidr_contains: two operands required");
    };
    let cidr = parse_cidr(string(a, "net.cidr_contains: operand 1")?)?;
    let candidate = parse_net(string(b, "net.cidr_contains: operand 2")?)?;
    Ok(Value::from(cidr.contains(&candidate)))
}

fn string<'a>(value: &'a Value, what: &str) -> anyhow::Result<&'a str> {
    match value {
        Value::String(s) => Ok(s),
        _ => bail!("{what} must be a string"),
    }
}

/// `net.cidr_intersects(cidr1, cidr2)`: whether the two networks overlap.
pub fn cidr_intersects(args: Vec<Value>) -> anyhow::Result<Value> {
    let (Some(a), Some(b)) = (args.first(), args.get(1)) else {
        bail!("net.cidr_intersects: two operands required");
    };
    let a = parse_cidr(string(a, "net.cidr_intersects: operand 1")?)?;
    let b = parse_cidr(string(b, "net.cidr_intersects: operand 2")?)?;
    Ok(Value::from(
        a.contains(&b.network()) || b.contains(&a.network()),
    ))
}

/// `net.cidr_merge(addrs)`: the smallest set of CIDRs covering the given
/// CIDRs and addresses (an array or set of strings).
pub fn cidr_merge(args: Vec<Value>) -> anyhow::Result<Value> {
    let items: Vec<&Value> = match args.first() {
        Some(Value::Array(a)) => a.iter().collect(),
        Some(Value::Set(s)) => s.iter().collect(),
        _ => bail!("net.cidr_merge: operand 1 must be an array or a set"),
    };
    let nets = items
        .into_iter()
        .map(|v| parse_net(string(v, "net.cidr_merge: element")?))
        .collect::<anyhow::Result<Vec<IpNet>>>()?;
    let merged: BTreeSet<Value> = IpNet::aggregate(&nets)
        .into_iter()
        .map(|n| Value::from(n.to_string()))
        .collect();
    Ok(Value::from(merged))
}

/// Keyed entries of an operand of `net.cidr_contains_matches`: a string is
/// its own key; arrays are keyed by index, sets by element, objects by key;
/// an element is a string or an array whose first item is the string.
fn keyed(
    value: &Value,
    what: &str,
    parse: fn(&str) -> anyhow::Result<IpNet>,
) -> anyhow::Result<Vec<(Value, IpNet)>> {
    let address = |element: &Value, what: &str| -> anyhow::Result<IpNet> {
        match element {
            Value::String(s) => parse(s),
            Value::Array(a) => match a.iter().next() {
                Some(Value::String(s)) => parse(s),
                _ => bail!("{what}: an array element must start with a CIDR or address"),
            },
            _ => bail!("{what}: elements must be strings or arrays"),
        }
    };
    Ok(match value {
        Value::String(s) => vec![(value.clone(), parse(s)?)],
        Value::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, e)| Ok((Value::from(i), address(e, what)?)))
            .collect::<anyhow::Result<_>>()?,
        Value::Set(s) => s
            .iter()
            .map(|e| Ok((e.clone(), address(e, what)?)))
            .collect::<anyhow::Result<_>>()?,
        Value::Object(o) => o
            .iter()
            .map(|(k, e)| Ok((k.clone(), address(e, what)?)))
            .collect::<anyhow::Result<_>>()?,
        _ => bail!("{what} must be a string, array, set or object"),
    })
}

/// `net.cidr_contains_matches(cidrs, cidrs_or_ips)`: the set of
/// `[cidr_key, match_key]` pairs where the first contains the second.
pub fn cidr_contains_matches(args: Vec<Value>) -> anyhow::Result<Value> {
    let (Some(a), Some(b)) = (args.first(), args.get(1)) else {
        bail!("net.cidr_contains_matches: two operands required");
    };
    // As OPA, which calls its net.cidr_contains on every pair: the first
    // operand holds CIDRs only, the second CIDRs or addresses.
    let cidrs = keyed(a, "net.cidr_contains_matches: operand 1", parse_cidr)?;
    let candidates = keyed(b, "net.cidr_contains_matches: operand 2", parse_net)?;
    let mut out = BTreeSet::new();
    for (ck, cidr) in &cidrs {
        for (mk, candidate) in &candidates {
            if cidr.contains(candidate) {
                out.insert(Value::from(vec![ck.clone(), mk.clone()]));
            }
        }
    }
    Ok(Value::from(out))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "tests")]
mod tests {
    use regorus::Engine;

    fn eval(query: &str) -> serde_json::Value {
        let mut engine = Engine::new();
        engine.set_strict_builtin_errors(false);
        super::super::builtins::register(&mut engine).unwrap();
        let results = engine.eval_query(query.into(), false).unwrap();
        let value = results
            .result
            .first()
            .map(|r| r.expressions[0].value.clone());
        value.map_or(serde_json::Value::Null, |v| {
            serde_json::from_str(&v.to_json_str().unwrap()).unwrap()
        })
    }

    #[test]
    fn cidr_intersects_as_documented() {
        assert_eq!(
            eval(r#"net.cidr_intersects("192.168.0.0/16", "192.168.1.0/24")"#),
            true
        );
        assert_eq!(
            eval(r#"net.cidr_intersects("192.168.0.0/24", "192.168.1.0/24")"#),
            false
        );
        assert_eq!(
            eval(
                r#"net.cidr_intersects("fd1e:5bfe:8af3:9ddc::/64", "fd1e:5bfe:8af3:9ddc:1111::/72")"#
            ),
            true
        );
        assert_eq!(eval(r#"net.cidr_intersects("10.0.0.0/8", "::/0")"#), false);
        assert_eq!(
            eval(r#"x := net.cidr_intersects("nope", "10.0.0.0/8")"#),
            serde_json::Value::Null,
            "undefined"
        );
    }

    /// OPA (Go's `net`) reads an IPv4-mapped IPv6 address as IPv4, and an
    /// IPv4-mapped network of prefix 96 or more as the IPv4 network.
    #[test]
    fn ipv4_mapped_ipv6_as_opa_reads_it() {
        for (query, want) in [
            (
                r#"net.cidr_contains("10.0.0.0/8", "::ffff:10.1.2.3")"#,
                true,
            ),
            (r#"net.cidr_contains("10.0.0.0/8", "::ffff:a01:203")"#, true),
            (
                r#"net.cidr_contains("10.0.0.0/8", "::ffff:11.1.2.3")"#,
                false,
            ),
            (
                r#"net.cidr_contains("::ffff:10.0.0.0/104", "10.1.2.3")"#,
                true,
            ),
            (r#"net.cidr_contains("::ffff:0:0/96", "192.0.2.1")"#, true),
            (
                r#"net.cidr_contains("10.0.0.0/8", "::ffff:10.1.0.0/112")"#,
                true,
            ),
            (
                r#"net.cidr_contains("10.0.0.0/8", "::ffff:10.0.0.0/100")"#,
                false,
            ),
            // Go compares only addresses of one family: a mapped address is
            // IPv4, so no IPv6 network holds it.
            (r#"net.cidr_contains("::/0", "::ffff:10.1.2.3")"#, false),
            (r#"net.cidr_contains("::/0", "10.1.2.3")"#, false),
            (
                r#"net.cidr_contains("::ffff:10.0.0.0/8", "10.1.2.3")"#,
                false,
            ),
            (r#"net.cidr_contains("0.0.0.0/0", "::1")"#, false),
            (r#"net.cidr_contains("2001:db8::/32", "2001:db8::1")"#, true),
            (r#"net.cidr_contains("10.0.0.0/8", "10.255.255.255")"#, true),
            (r#"net.cidr_contains("10.0.0.0/8", "10.0.0.0/7")"#, false),
            (
                r#"net.cidr_intersects("10.0.0.0/8", "::ffff:10.0.0.0/120")"#,
                true,
            ),
            (
                r#"net.cidr_intersects("::/0", "::ffff:10.0.0.0/120")"#,
                false,
            ),
        ] {
            assert_eq!(eval(query), want, "{query}");
        }
        assert_eq!(
            eval(r#"net.cidr_contains_matches(["10.0.0.0/8", "::/0"], "::ffff:10.9.9.9")"#),
            serde_json::json!([[0, "::ffff:10.9.9.9"]])
        );
        for undefined in [
            r#"x := net.cidr_contains("10.0.0.1", "10.0.0.1")"#,
            r#"x := net.cidr_contains("10.0.0.0/8", "nope")"#,
            r#"x := net.cidr_contains_matches("10.0.0.1", "10.0.0.1")"#,
        ] {
            assert_eq!(eval(undefined), serde_json::Value::Null, "{undefined}");
        }
    }

    #[test]
    fn cidr_merge_as_documented() {
        assert_eq!(
            eval(r#"net.cidr_merge(["192.0.128.0/24", "192.0.129.0/24"])"#),
            serde_json::json!(["192.0.128.0/23"])
        );
        assert_eq!(
            eval(r#"net.cidr_merge(["192.0.128.0/24", "192.0.130.0/24"])"#),
            serde_json::json!(["192.0.128.0/24", "192.0.130.0/24"])
        );
        assert_eq!(
            eval(r#"net.cidr_merge({"10.0.0.1", "10.0.0.0"})"#),
            serde_json::json!(["10.0.0.0/31"])
        );
        assert_eq!(
            eval(
                r#"net.cidr_merge(["10.0.0.0/8", "10.1.0.0/16", "2001:db8::/33", "2001:db8:8000::/33"])"#
            ),
            serde_json::json!(["10.0.0.0/8", "2001:db8::/32"])
        );
    }

    #[test]
    fn cidr_contains_matches_as_documented() {
        assert_eq!(
            eval(r#"net.cidr_contains_matches("1.1.1.0/24", "1.1.1.128")"#),
            serde_json::json!([["1.1.1.0/24", "1.1.1.128"]])
        );
        assert_eq!(
            eval(r#"net.cidr_contains_matches(["1.1.1.0/24", "1.1.2.0/24"], "1.1.1.128")"#),
            serde_json::json!([[0, "1.1.1.128"]])
        );
        assert_eq!(
            eval(
                r#"net.cidr_contains_matches([["1.1.0.0/16", "foo"], "1.1.2.0/24"], ["1.1.1.128", ["1.1.254.254", "bar"]])"#
            ),
            serde_json::json!([[0, 0], [0, 1]])
        );
        assert_eq!(
            eval(
                r#"net.cidr_contains_matches({"x": "1.1.0.0/16", "y": "1.1.2.0/24"}, {"a": "1.1.1.128", "b": ["1.1.254.254", "bar"]})"#
            ),
            serde_json::json!([["x", "a"], ["x", "b"]])
        );
    }
}
