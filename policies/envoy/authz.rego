# The default decision for Envoy's ext_authz (decision path envoy/authz/allow).
#
# Zero trust: nothing is allowed unless a rule below allows it, and every
# deny names its reason. What is allowed:
#   - anyone may GET or HEAD the public pages under /public/;
#   - a workload may call the routes data.arbiter.services grants to its
#     SPIFFE ID, which Envoy takes from the mTLS peer certificate (a client
#     cannot set it with a header).
package envoy.authz

import input.attributes.request.http

default allow := {"allowed": false, "http_status": 403, "reason": "no_matching_rule"}

allow := {
	"allowed": true,
	"headers": {"x-arbiter-rule": first(matched)},
} if count(matched) > 0

matched contains "public" if {
	http.method in {"GET", "HEAD"}
	input.parsed_path[0] == "public"
}

matched contains "service_grant" if {
	some grant in data.arbiter.services[input.attributes.source.principal]
	http.method in grant.methods
	glob.match(grant.path, ["/"], concat("/", array.concat([""], input.parsed_path)))
}

first(names) := sort(names)[0]
