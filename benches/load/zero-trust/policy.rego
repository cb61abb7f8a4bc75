# The zero-trust decision the performance targets are set on: a verified
# RS256 token whose scopes include the one this method and route need, a
# source inside the corporate network, and a device on the inventory that
# is compliant. Every lookup in data is by key, so the decision costs the
# same with ten permission entries or ten thousand.
#
# Written as one rule body, with object.get for the nested lookup, on
# purpose: in regorus calling another rule, or indexing data with two input
# references in a row, costs more than the lookups themselves (see
# BENCHMARKS.md).
package envoy.authz

import input.attributes.request.http

default allow := {"allowed": false, "http_status": 403, "reason": "denied"}

allow := {"allowed": true, "headers": {"x-user": input.identity.subject}} if {
	# Routes are keyed by method, then by their first two path segments.
	object.get(data.zero_trust.permissions, [http.method, input.parsed_path[0], input.parsed_path[1]], null) in input.identity.scopes
	net.cidr_contains(data.zero_trust.network, input.source.ip)
	data.zero_trust.devices[http.headers["x-device-id"]].compliant == true
}
